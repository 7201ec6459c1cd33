//! End to end in the real libvirtd and QEMU (TCG here): `phyllome create`
//! boots the project's tiny test guest by direct kernel boot, and the guest
//! reports over its serial console what it sees.

mod common;
use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn create(name: &str, cmdline: &str, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = vec!["create".into(), name.into()];
    // The test's own --memory/--disk-size replace the guest's defaults.
    let defaults = guest_args(cmdline);
    for pair in defaults.chunks(2) {
        if !extra.contains(&pair[0].as_str()) {
            args.extend(pair.iter().cloned());
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    phyllome(&refs)
}

/// Everything `name` could leave behind, as a list of what is still there.
fn leftovers(name: &str) -> Vec<String> {
    let mut left = Vec::new();
    if virsh(&["dominfo", name]).status.success() {
        left.push("domain".to_string());
    }
    if Path::new(&volume_path(name)).exists() {
        left.push("volume file".into());
    }
    let vols = String::from_utf8_lossy(&virsh(&["vol-list", "phyllome"]).stdout).into_owned();
    if vols.contains(&format!("{name}.qcow2")) {
        left.push("libvirt volume".into());
    }
    let secrets = String::from_utf8_lossy(&virsh(&["secret-list"]).stdout).into_owned();
    if secrets.contains(&volume_path(name)) {
        left.push("secret".into());
    }
    for nvram in ["fd", "qcow2", "qcow2.phyllome-tmp"] {
        if Path::new(&format!("/var/lib/libvirt/qemu/nvram/{name}_VARS.{nvram}")).exists() {
            left.push(format!("nvram ({nvram})"));
        }
    }
    if Path::new(&format!("/var/lib/phyllome/pending/{name}.json")).exists() {
        left.push("journal entry".into());
    }
    if Path::new(&format!("/var/lib/phyllome/boot/{name}")).exists() {
        left.push("boot copies".into());
    }
    left
}

/// An isolated libvirt network (no forward, no address): traffic stays on this host.
struct IsolatedNet(String);

impl IsolatedNet {
    fn new(suffix: &str) -> IsolatedNet {
        let name = format!("{PREFIX}{suffix}-{}", std::process::id());
        let bridge = format!("phyt{}", std::process::id() % 1_000_000);
        virsh(&["net-destroy", &name]);
        virsh(&["net-undefine", &name]);
        let file = std::env::temp_dir().join(format!("{name}.xml"));
        std::fs::write(&file, format!("<network><name>{name}</name><bridge name='{bridge}' stp='off'/></network>"))
            .unwrap();
        virsh_ok(&["net-define", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(file);
        virsh_ok(&["net-start", &name]);
        IsolatedNet(name)
    }
}

impl Drop for IsolatedNet {
    fn drop(&mut self) {
        virsh(&["net-destroy", &self.0]);
        virsh(&["net-undefine", &self.0]);
    }
}

#[test]
fn linux_vm_sees_every_virtio_device_of_its_profile() {
    require_libvirt();
    let net = IsolatedNet::new("net-devices");
    let vm = TestVm::new("devices");
    ok(create(&vm.0, "phyllome.test=poweroff", &["--network", &net.0, "--start"]));
    // The whole line: the guest may still be writing it when its start appears in the log.
    wait_for_serial(&vm.0, "PHYLLOME-VIRTIO:", 120);
    let log = wait_for_serial(&vm.0, "PHYLLOME-PCI:", 60);
    let line = log.lines().find(|l| l.contains("PHYLLOME-VIRTIO:")).unwrap();
    // net, blk, console (virtio-serial), rng, balloon, gpu, input.
    for (id, what) in [
        ("0x0001", "net"),
        ("0x0002", "disk"),
        ("0x0003", "console"),
        ("0x0004", "rng"),
        ("0x0005", "balloon"),
        ("0x0010", "gpu"),
        ("0x0012", "input"),
    ] {
        assert!(line.contains(id), "no virtio {what} ({id}) in {line:?}");
    }
    // No virtio-sound (QEMU cannot save its state, so memory snapshots would be refused).
    assert!(!line.contains("0x0019"), "virtio-sound (0x0019) in {line:?}");
    // The guest booted through OVMF from a qcow2 variable store where libvirt can snapshot it.
    let nvram = format!("/var/lib/libvirt/qemu/nvram/{}_VARS.qcow2", vm.0);
    if host_supports("qcow2-nvram") {
        assert_eq!(image_format(&nvram), "qcow2");
        let info = ok(phyllome(&["info", &vm.0]));
        assert!(virsh_ok(&["dumpxml", &vm.0]).contains(&format!("format='qcow2'>{nvram}</nvram>")), "{info}");
    } else {
        assert!(!Path::new(&nvram).exists());
    }
    wait_state(&vm.0, "shut off", 60);
    ok(phyllome(&["delete", &vm.0]));
    assert_eq!(leftovers(&vm.0), Vec::<String>::new());
}

#[test]
fn disk_is_encrypted_at_rest_and_reads_back_after_reboot() {
    require_libvirt();
    let vm = TestVm::new("encrypted");
    let marker = format!("secret-marker-{}", std::process::id());
    ok(create(&vm.0, &format!("phyllome.test=write-marker:{marker}"), &["--network", "none", "--start"]));
    wait_for_serial(&vm.0, "PHYLLOME-WROTE", 120);
    wait_state(&vm.0, "shut off", 60);

    let file = std::fs::read(volume_path(&vm.0)).unwrap();
    let needle = marker.as_bytes();
    assert!(!file.windows(needle.len()).any(|w| w == needle), "the marker is readable in the qcow2 file");
    let info = Command::new("qemu-img").args(["info", "--output=json", &volume_path(&vm.0)]).output().unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(info.contains("\"encrypted\": true") && info.contains("\"format\": \"luks\""), "{info}");

    redefine_cmdline(&vm.0, "phyllome.test=read-marker");
    ok(phyllome(&["start", &vm.0]));
    let log = wait_for_serial(&vm.0, "PHYLLOME-MARKER", 120);
    assert!(log.contains(&format!("PHYLLOME-MARKER:{marker}")), "marker not read back:\n{log}");
    wait_state(&vm.0, "shut off", 60);
    ok(phyllome(&["delete", &vm.0]));
    assert_eq!(leftovers(&vm.0), Vec::<String>::new());
}

#[test]
fn lifecycle_pause_resume_graceful_stop_kill_and_delete() {
    require_libvirt();
    let vm = TestVm::new("lifecycle");
    ok(create(&vm.0, "", &["--network", "none", "--start"]));
    wait_for_serial(&vm.0, "PHYLLOME-READY", 120);
    let list: serde_json::Value = serde_json::from_str(&ok(phyllome(&["list", "--json"]))).unwrap();
    let row = list.as_array().unwrap().iter().find(|r| r["name"] == vm.0.as_str()).expect("VM listed").clone();
    assert_eq!(row["os"], "linux");
    assert_eq!(row["state"], "running");
    assert_eq!(row["memory_mib"], 512);
    assert_eq!(row["encrypted"], true);
    assert_eq!(row["disk_gib"], 4.0);
    assert!(row["vcpus"].as_u64().unwrap() >= 1);

    let out = phyllome(&["pause", &vm.0]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("{} paused", vm.0)), "pause said nothing");
    ok(out);
    wait_state(&vm.0, "paused", 10);
    let out = phyllome(&["resume", &vm.0]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("running again"), "resume said nothing");
    ok(out);
    wait_state(&vm.0, "running", 10);

    let out = phyllome(&["stop", &vm.0, "--timeout", "60"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ACPI power button"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ok(out);
    wait_state(&vm.0, "shut off", 5);
    assert!(serial_log(&vm.0).contains("PHYLLOME-POWERBUTTON"), "the guest did not see the power button");

    ok(phyllome(&["start", &vm.0]));
    wait_for_serial(&vm.0, "PHYLLOME-READY", 120);
    // The serial console on a terminal (script(1) gives it one), without virsh's polkit noise.
    let console = Command::new("script")
        .args(["-qc", &format!("timeout 3 {} console {}", env!("CARGO_BIN_EXE_phyllome"), vm.0), "/dev/null"])
        .env("PHYLLOME_CONNECT", URI)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&console.stdout);
    assert!(text.contains("Connected to domain"), "{text}");
    assert!(!text.contains("Authorization not available"), "{text}");
    let shot = std::env::temp_dir().join(format!("{}.png", vm.0));
    ok(phyllome(&["screenshot", &vm.0, shot.to_str().unwrap()]));
    assert!(std::fs::read(&shot).unwrap().starts_with(b"\x89PNG"));
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&shot).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a screenshot is private");
    }
    let _ = std::fs::remove_file(&shot);
    let bad = "/nonexistent-dir/shot.png";
    let out = phyllome(&["screenshot", &vm.0, bad]);
    assert!(String::from_utf8_lossy(&out.stderr).contains(bad), "the error does not name the path");
    let info: serde_json::Value = serde_json::from_str(&ok(phyllome(&["info", &vm.0, "--json"]))).unwrap();
    assert!(info["display"].as_str().unwrap().starts_with("vnc://127.0.0.1:"), "{info}");

    let out = phyllome(&["delete", &vm.0]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is running"));
    ok(phyllome(&["kill", &vm.0]));
    wait_state(&vm.0, "shut off", 5);
    ok(phyllome(&["delete", &vm.0]));
    assert_eq!(leftovers(&vm.0), Vec::<String>::new());
}

/// Every /proc/PID/{cmdline,environ} that holds `needle`.
fn processes_holding(needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = e.file_name().to_string_lossy().to_string();
        if !pid.chars().all(|c| c.is_ascii_digit()) || pid == std::process::id().to_string() {
            continue;
        }
        for f in ["cmdline", "environ"] {
            if let Ok(data) = std::fs::read(format!("/proc/{pid}/{f}")) {
                if data.windows(needle.len()).any(|w| w == needle) {
                    hits.push(format!("{pid}/{f}"));
                }
            }
        }
    }
    hits
}

#[test]
fn typed_passphrase_never_shows_in_any_process_and_is_asked_at_start() {
    require_libvirt();
    let vm = TestVm::new("passphrase");
    let pass = format!("correct-horse-{}", std::process::id());
    let stop = Arc::new(AtomicBool::new(false));
    let scanner = {
        let (stop, needle) = (Arc::clone(&stop), pass.clone().into_bytes());
        std::thread::spawn(move || {
            let mut hits = Vec::new();
            let mut scans = 0;
            while !stop.load(Ordering::Relaxed) {
                hits.extend(processes_holding(&needle));
                scans += 1;
            }
            (hits, scans)
        })
    };
    let mut args = vec!["create".to_string(), vm.0.clone()];
    args.extend(guest_args("phyllome.test=poweroff"));
    args.extend(["--network", "none", "--passphrase-prompt", "--start"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = phyllome_stdin(&refs, &format!("{pass}\n{pass}\n"));
    stop.store(true, Ordering::Relaxed);
    let (hits, scans) = scanner.join().unwrap();
    ok(out);
    assert!(scans > 3, "the /proc scan ran only {scans} times");
    assert!(hits.is_empty(), "the passphrase was visible in {hits:?}");
    // Kept nowhere once QEMU has started.
    assert!(!leftovers(&vm.0).contains(&"secret".to_string()), "the typed passphrase outlived create");
    wait_state(&vm.0, "shut off", 120);

    let out = phyllome_stdin(&["start", &vm.0], "wrong-passphrase\n");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not unlock"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!leftovers(&vm.0).contains(&"secret".to_string()));
    ok(phyllome_stdin(&["start", &vm.0], &format!("{pass}\n")));
    wait_for_serial(&vm.0, "PHYLLOME-VIRTIO", 120);
    wait_state(&vm.0, "shut off", 60);
    ok(phyllome(&["delete", &vm.0]));
    assert_eq!(leftovers(&vm.0), Vec::<String>::new());
}

#[test]
fn a_failure_at_any_create_step_leaves_nothing() {
    require_libvirt();
    for step in ["claim", "pool", "secret", "volume", "boot-files", "define", "nvram", "start", "finish"] {
        let vm = TestVm::new(&format!("fault-{step}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_phyllome"));
        cmd.env("PHYLLOME_CONNECT", URI).env("PHYLLOME_TEST_FAIL_AT", step).arg("create").arg(&vm.0);
        cmd.args(guest_args("phyllome.test=poweroff")).args(["--network", "none", "--start"]);
        let out = cmd.output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{step}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(&format!("injected failure at step {step}")), "{step}: {err}");
        assert_eq!(leftovers(&vm.0), Vec::<String>::new(), "after a failure at {step}");
    }
}

#[test]
fn a_create_killed_with_sigkill_is_cleaned_by_the_next_command() {
    require_libvirt();
    for step in ["define", "finish"] {
        let vm = TestVm::new(&format!("kill9-{step}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_phyllome"));
        cmd.env("PHYLLOME_CONNECT", URI).env("PHYLLOME_TEST_PAUSE_AT", step).arg("create").arg(&vm.0);
        cmd.args(guest_args("")).args(["--network", "none", "--start"]);
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        // Wait until the create has made its disk (and, at "finish", started the VM).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = Path::new(&volume_path(&vm.0)).exists()
                && (step != "finish" || virsh(&["domstate", &vm.0]).stdout.starts_with(b"running"));
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "create never reached {step}");
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(300));
        // Checked while the create is alive: once it is dead, any phyllome command of a test
        // running beside this one may already clean up after it.
        assert!(!leftovers(&vm.0).is_empty(), "{step}: nothing to clean up?");
        child.kill().unwrap(); // SIGKILL: no chance to clean up
        child.wait().unwrap();
        ok(phyllome(&["list"]));
        assert_eq!(leftovers(&vm.0), Vec::<String>::new(), "after kill -9 at {step} and `phyllome list`");
    }
}

#[test]
fn bad_input_is_refused_with_nothing_created_and_other_vms_untouched() {
    require_libvirt();
    let vm = TestVm::new("busy");
    ok(create(&vm.0, "phyllome.test=poweroff", &["--network", "none"]));
    let before = virsh_ok(&["dumpxml", &vm.0]);

    let out = create(&vm.0, "", &["--network", "none"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already exists"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(virsh_ok(&["dumpxml", &vm.0]), before, "the existing VM changed");
    assert!(Path::new(&volume_path(&vm.0)).exists(), "the existing VM's disk was removed");

    let other = TestVm::new("bad-input");
    // A defined but stopped network: starting on it would fail half way.
    let inactive = IsolatedNet::new("net-inactive");
    virsh_ok(&["net-destroy", &inactive.0]);
    let host_mib = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024;
    let too_much = format!("{}M", host_mib + 1024);
    // Each refusal exits with its class's code (README, "Exit codes"): 3 invalid input, 4 not found, 5 conflict.
    let cases: Vec<(Vec<&str>, &str, i32)> = vec![
        (vec!["--iso", "/var/lib/phyllome/no-such.iso"], "does not exist", 4),
        (vec!["--iso", "/var/lib"], "not a regular file", 3),
        (vec!["--memory", &too_much], "more than this host's", 3),
        (vec!["--memory", "0M"], "zero", 3),
        (vec!["--memory", "512"], "has no unit", 3),
        (vec!["--disk-size", "1.5G"], "whole GiB", 3),
        (vec!["--disk-size", "lots"], "not a size", 3),
        (vec!["--disk-size", "100000T"], "larger than", 3),
        (vec!["--cpus", "0"], "at least 1", 3),
        (vec!["--network", "phyllome-test-no-such-net"], "does not exist", 4),
        (vec!["--network", &inactive.0], "is not active", 5),
    ];
    for (extra, want, code) in cases {
        let mut args = extra.clone();
        args.push("--start");
        let out = create(&other.0, "", &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{extra:?}");
        assert!(err.contains(want), "{extra:?}: {err}");
        assert_eq!(leftovers(&other.0), Vec::<String>::new(), "{extra:?} left something");
        // The same refusal with --json is JSON, with its kind.
        let mut args = args.clone();
        args.push("--json");
        let out = create(&other.0, "", &args);
        let v: serde_json::Value = serde_json::from_slice(&out.stderr)
            .unwrap_or_else(|e| panic!("{extra:?} --json: not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
        assert!(v["error"].as_str().unwrap().contains(want), "{v}");
        let kind = match code {
            3 => "invalid-input",
            4 => "not-found",
            _ => "conflict",
        };
        assert_eq!(v["kind"], kind, "{extra:?}");
        assert_eq!(out.status.code(), Some(code));
    }
    for bad in ["a/b", "x<y>", &"n".repeat(200)] {
        let out = create(bad, "", &["--network", "none"]);
        assert_eq!(out.status.code(), Some(3), "{bad}");
    }
    assert_eq!(virsh_ok(&["dumpxml", &vm.0]), before, "the existing VM changed");
    ok(phyllome(&["delete", &vm.0]));
}
