//! Helpers shared by the tests that drive the real libvirtd.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const URI: &str = "qemu:///system";
/// Every object a test makes carries this prefix.
pub const PREFIX: &str = "phyllome-test-";
/// The tiny test guest built by scripts/build-test-guest.sh.
pub const GUEST: &str = "/var/lib/phyllome/test-guest";
/// Where Phyllome's pool keeps disks.
pub const POOL_PATH: &str = "/var/lib/libvirt/images/phyllome";

pub fn volume_path(name: &str) -> String {
    format!("{POOL_PATH}/{name}.qcow2")
}

/// A test VM (or foreign domain) name, removed with everything it made on drop.
pub struct TestVm(pub String);

impl TestVm {
    /// `phyllome-test-SUFFIX-PID`: two test runs on one host never share a VM.
    pub fn new(suffix: &str) -> TestVm {
        let vm = TestVm(format!("{PREFIX}{suffix}-{}", std::process::id()));
        vm.clean();
        vm
    }

    /// Removes the domain, its disk, the disk's secret and any journal entry, however far a create got.
    pub fn clean(&self) {
        // Its snapshots (by the domain's UUID) and their memory keys.
        let uuid = String::from_utf8_lossy(&virsh(&["domuuid", &self.0]).stdout).trim().to_string();
        if !uuid.is_empty() {
            let dir = format!("/var/lib/phyllome/snapshots/{uuid}");
            let secrets = String::from_utf8_lossy(&virsh(&["secret-list"]).stdout).into_owned();
            for line in secrets.lines().filter(|l| l.contains(&format!("{dir}/"))) {
                if let Some(u) = line.split_whitespace().next() {
                    virsh(&["secret-undefine", u]);
                }
            }
            let _ = std::fs::remove_dir_all(dir);
            let _ = std::fs::remove_file(format!("/var/lib/phyllome/operations/{uuid}.json"));
        }
        virsh(&["destroy", &self.0]);
        virsh(&["undefine", &self.0, "--nvram", "--tpm", "--snapshots-metadata"]);
        virsh(&["vol-delete", &format!("{}.qcow2", self.0), "--pool", "phyllome"]);
        let _ = std::fs::remove_file(volume_path(&self.0));
        let secrets = String::from_utf8_lossy(&virsh(&["secret-list"]).stdout).into_owned();
        for line in secrets.lines().filter(|l| l.contains(&volume_path(&self.0))) {
            if let Some(uuid) = line.split_whitespace().next() {
                virsh(&["secret-undefine", uuid]);
            }
        }
        let _ = std::fs::remove_file(format!("/var/lib/phyllome/pending/{}.json", self.0));
        // Phyllome's copies of a direct-boot kernel and initrd.
        let _ = std::fs::remove_dir_all(format!("/var/lib/phyllome/boot/{}", self.0));
    }

    pub fn exists(&self) -> bool {
        virsh(&["dominfo", &self.0]).status.success()
    }

    pub fn state(&self) -> String {
        String::from_utf8_lossy(&virsh(&["domstate", &self.0]).stdout).trim().to_string()
    }
}

impl Drop for TestVm {
    fn drop(&mut self) {
        self.clean();
    }
}

pub fn virsh(args: &[&str]) -> Output {
    Command::new("virsh").arg("-c").arg(URI).args(args).output().expect("virsh must be installed: run scripts/setup.sh")
}

/// Runs virsh and panics with its stderr when it fails.
pub fn virsh_ok(args: &[&str]) -> String {
    let out = virsh(args);
    assert!(out.status.success(), "virsh {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The output of a command that must succeed: its standard output.
pub fn ok(out: Output) -> String {
    assert!(out.status.success(), "phyllome failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A refused command's exit code, and its `--json` error's kind and message (the whole standard error when it is not JSON).
pub fn refused(out: Output) -> (i32, String, String) {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let v: serde_json::Value = serde_json::from_str(err.trim().lines().last().unwrap_or("")).unwrap_or_default();
    (
        out.status.code().unwrap_or(-1),
        v["kind"].as_str().unwrap_or("").into(),
        v["error"].as_str().unwrap_or(&err).into(),
    )
}

/// `phyllome ARGS` with `input` on its standard input.
pub fn phyllome_stdin(args: &[&str], input: &str) -> Output {
    phyllome_stdin_env(args, input, &[])
}

/// [`phyllome_stdin`] with extra environment variables (the test hooks).
pub fn phyllome_stdin_env(args: &[&str], input: &str, env: &[(&str, &str)]) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_phyllome"))
        .env("PHYLLOME_CONNECT", URI)
        .envs(env.iter().copied())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

pub fn phyllome(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_phyllome")).env("PHYLLOME_CONNECT", URI).args(args).output().unwrap()
}

/// A recorded host tree of `fixtures/sysroots/` (what `--root` takes).
pub fn sysroot(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/sysroots").join(name);
    p.canonicalize().unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// `phyllome attach ARGS...`: its exit code, standard output and standard error.
pub fn attach(args: &[&str]) -> (Option<i32>, String, String) {
    let out = phyllome(&[&["attach"], args].concat());
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether `phyllome host facts` says this host's libvirt/QEMU can do `feature` (an id of the capability record).
pub fn host_supports(feature: &str) -> bool {
    let out = phyllome(&["host", "facts", "--json"]);
    assert!(out.status.success(), "phyllome host facts failed: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = v["features"].as_array().unwrap().iter().find(|f| f["feature"] == feature).cloned();
    row.unwrap_or_else(|| panic!("no feature {feature} in host facts"))["supported"].as_bool().unwrap()
}

/// The format `qemu-img info` reads in a file.
pub fn image_format(path: &str) -> String {
    let out = Command::new("qemu-img").args(["info", "--output=json", "-U", path]).output().unwrap();
    assert!(out.status.success(), "qemu-img info {path}: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["format"].as_str().unwrap_or_default().to_string()
}

pub fn require_libvirt() {
    let out = virsh(&["version"]);
    assert!(
        out.status.success(),
        "libvirtd is not reachable on {URI}: run scripts/setup.sh first ({})",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory storage pool for one test; removed with its volumes on drop.
pub struct TestPool {
    pub name: String,
    pub path: String,
}

impl TestPool {
    pub fn new(suffix: &str) -> TestPool {
        let name = format!("{PREFIX}{suffix}");
        let path = format!("/var/lib/libvirt/images/{name}");
        let pool = TestPool { name: name.clone(), path: path.clone() };
        pool.remove(); // a previous run killed before cleaning up
        virsh_ok(&["pool-define-as", &name, "dir", "--target", &path]);
        virsh_ok(&["pool-build", &name]);
        virsh_ok(&["pool-start", &name]);
        pool
    }

    pub fn create_volume(&self, volume: &str, size: &str) {
        virsh_ok(&["vol-create-as", &self.name, volume, size, "--format", "qcow2"]);
    }

    fn remove(&self) {
        if virsh(&["pool-info", &self.name]).status.success() {
            let vols = virsh(&["vol-list", &self.name, "--name"]);
            for v in String::from_utf8_lossy(&vols.stdout).lines().filter(|l| !l.trim().is_empty()) {
                virsh(&["vol-delete", v.trim(), "--pool", &self.name]);
            }
            virsh(&["pool-destroy", &self.name]);
            virsh(&["pool-delete", &self.name]);
            virsh(&["pool-undefine", &self.name]);
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        self.remove();
    }
}

/// A phyllome a test started in the background: killed (and reaped) on drop unless it was waited for,
/// so a failing test leaves no command running on to make things after the cleanup.
pub struct Background(Option<std::process::Child>);

impl Background {
    pub fn new(child: std::process::Child) -> Background {
        Background(Some(child))
    }
    pub fn id(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }
    /// kill -9, reaped.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    pub fn wait_with_output(mut self) -> Output {
        self.0.take().expect("running").wait_with_output().unwrap()
    }
    pub fn stdin(&mut self) -> std::process::ChildStdin {
        self.0.as_mut().expect("running").stdin.take().expect("piped")
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A pool on a small tmpfs, removed (pool, mount, folder) however the test ends.
pub struct SmallPool {
    pub name: String,
    pub dir: PathBuf,
}

impl SmallPool {
    pub fn new(suffix: &str, mib: u32) -> SmallPool {
        let name = format!("{PREFIX}{suffix}-{}", std::process::id());
        let dir = PathBuf::from(format!("/tmp/{name}"));
        let p = SmallPool { name, dir };
        p.clean();
        std::fs::create_dir_all(&p.dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m,mode=0755"), "tmpfs"])
            .arg(&p.dir)
            .status();
        assert!(st.is_ok_and(|s| s.success()), "cannot mount a tmpfs at {}", p.dir.display());
        virsh_ok(&["pool-define-as", &p.name, "dir", "--target", p.dir.to_str().unwrap()]);
        virsh_ok(&["pool-start", &p.name]);
        p
    }

    fn clean(&self) {
        let _ = virsh(&["pool-destroy", &self.name]);
        let _ = virsh(&["pool-undefine", &self.name]);
        let _ = Command::new("umount").arg(&self.dir).status();
        let _ = std::fs::remove_dir(&self.dir);
    }
}

impl Drop for SmallPool {
    fn drop(&mut self) {
        self.clean();
    }
}

/// A domain a test defined; destroyed and undefined (with NVRAM and TPM state) on drop.
pub struct TestDomain {
    pub name: String,
}

impl TestDomain {
    pub fn adopt(name: &str) -> TestDomain {
        assert!(name.starts_with(PREFIX));
        let d = TestDomain { name: name.to_string() };
        d.remove();
        d
    }

    pub fn remove(&self) {
        virsh(&["destroy", &self.name]);
        virsh(&["undefine", &self.name, "--nvram", "--tpm", "--managed-save", "--snapshots-metadata"]);
    }

    pub fn state(&self) -> String {
        virsh_ok(&["domstate", &self.name]).trim().to_string()
    }
}

impl Drop for TestDomain {
    fn drop(&mut self) {
        self.remove();
    }
}

/// How many distinct colours a screenshot (PNG or PPM, as QEMU versions differ) shows, up to 65.
pub fn screenshot_colours(path: &Path) -> usize {
    let data = std::fs::read(path).unwrap();
    let (pixels, channels): (Vec<u8>, usize) = if data.starts_with(b"\x89PNG") {
        let decoder = png::Decoder::new(std::io::Cursor::new(data));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        buf.truncate(info.buffer_size());
        (buf, info.color_type.samples())
    } else {
        assert_eq!(&data[..2], b"P6", "screenshot is neither PNG nor PPM");
        // P6 <w> <h> <max> then RGB: skip three whitespace-separated fields after the magic.
        let mut fields = 0;
        let mut i = 2;
        let mut in_token = false;
        while fields < 3 && i < data.len() {
            let ws = data[i].is_ascii_whitespace();
            if !ws && !in_token {
                in_token = true;
            } else if ws && in_token {
                in_token = false;
                fields += 1;
            }
            i += 1;
        }
        (data[i..].to_vec(), 3)
    };
    let mut colours = std::collections::HashSet::new();
    for px in pixels.chunks_exact(channels).step_by(7) {
        colours.insert(px.to_vec());
        if colours.len() > 64 {
            break;
        }
    }
    colours.len()
}

/// Defines a minimal stopped TCG domain (no disk, no NIC, no display) named `name`; removed on drop.
pub fn define_minimal_domain(name: &str) -> TestDomain {
    let dom = TestDomain::adopt(name);
    let xml = format!(
        "<domain type='qemu'>\n  <name>{name}</name>\n  <memory unit='MiB'>64</memory>\n  <vcpu>1</vcpu>\n  \
         <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n  </os>\n  <devices/>\n</domain>\n"
    );
    let file = std::env::temp_dir().join(format!("{name}-{}.xml", std::process::id()));
    std::fs::write(&file, xml).unwrap();
    let out = virsh(&["define", "--validate", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "cannot define {name}: {}", String::from_utf8_lossy(&out.stderr));
    dom
}

/// Validates a whole domain document against libvirt's RELAX NG schema (xmllint); Err carries xmllint's output.
pub fn xmllint_domain(xml: &str) -> Result<(), String> {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file = std::env::temp_dir().join(format!("phyllome-xmllint-{}-{n}.xml", std::process::id()));
    std::fs::write(&file, xml).unwrap();
    let out = Command::new("xmllint")
        .args(["--noout", "--relaxng", "/usr/share/libvirt/schemas/domain.rng"])
        .arg(&file)
        .output()
        .expect("xmllint must be installed (libxml2-utils): run scripts/setup.sh");
    let _ = std::fs::remove_file(&file);
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The serial console log of the VM's current boot (libvirt rewrites it at each start: `append='off'`).
pub fn serial_log(name: &str) -> String {
    std::fs::read(format!("/var/log/libvirt/qemu/{name}-serial.log"))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The serial log once the guest printed `needle` in it.
pub fn wait_for_serial(name: &str, needle: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let log = serial_log(name);
        if log.contains(needle) {
            return log;
        }
        assert!(Instant::now() < deadline, "{name} never printed {needle:?}; serial log:\n{log}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits for `virsh domstate` to say `want`.
pub fn wait_state(name: &str, want: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let out = virsh(&["domstate", name]);
        let st = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if st == want {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {st:?}, expected {want:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Redefines a direct-boot VM with `console=ttyS0 panic=-1 CMDLINE` as its kernel command line.
pub fn redefine_cmdline(name: &str, cmdline: &str) {
    let xml = virsh_ok(&["dumpxml", "--inactive", name]);
    let start = xml.find("<cmdline>").unwrap() + "<cmdline>".len();
    let end = xml.find("</cmdline>").unwrap();
    let new = format!("{}console=ttyS0 panic=-1 {cmdline}{}", &xml[..start], &xml[end..]);
    let file = std::env::temp_dir().join(format!("{name}-redefine.xml"));
    std::fs::write(&file, new).unwrap();
    virsh_ok(&["define", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(file);
}

/// The test guest's create arguments: OS, kernel, initrd, `console=ttyS0 panic=-1 CMDLINE`, 512 MiB, 4 GiB.
pub fn guest_args(cmdline: &str) -> Vec<String> {
    assert!(
        Path::new(GUEST).join("vmlinuz").exists(),
        "the test guest is missing: run scripts/build-test-guest.sh (scripts/test.sh does)"
    );
    vec![
        "--os".into(),
        "linux".into(),
        "--kernel".into(),
        format!("{GUEST}/vmlinuz"),
        "--initrd".into(),
        format!("{GUEST}/initrd.img"),
        "--cmdline".into(),
        format!("console=ttyS0 panic=-1 {cmdline}"),
        "--memory".into(),
        "512M".into(),
        "--disk-size".into(),
        "4G".into(),
    ]
}

/// `phyllome create NAME` of the test guest with no NIC, then `extra` (`--start`...).
pub fn create_guest_args(name: &str, cmdline: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["create".to_string(), name.to_string()];
    args.extend(guest_args(cmdline));
    args.extend(["--network", "none"].map(String::from));
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// A second libvirt host, stopped and removed (with everything on it) on drop.
pub struct SecondHost {
    pub name: String,
    pub uri: String,
}

impl SecondHost {
    pub fn start(suffix: &str, extra: &[&str]) -> SecondHost {
        let name = format!("{PREFIX}h2-{suffix}-{}", std::process::id());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/second-host.sh");
        let out = Command::new(&script).arg("start").arg(&name).args(extra).output().unwrap();
        assert!(out.status.success(), "second host: {}", String::from_utf8_lossy(&out.stderr));
        let uri = String::from_utf8_lossy(&out.stdout).trim().to_string();
        SecondHost { name, uri }
    }
    pub fn base(&self) -> PathBuf {
        PathBuf::from(format!("/var/lib/phyllome-test-hosts/{}", self.name))
    }
    pub fn virsh(&self, args: &[&str]) -> Output {
        Command::new("virsh").arg("-c").arg(&self.uri).args(args).output().unwrap()
    }
    pub fn virsh_ok(&self, args: &[&str]) -> String {
        let out = self.virsh(args);
        assert!(out.status.success(), "virsh {args:?} there: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
    pub fn serial(&self, vm: &str) -> String {
        let raw = std::fs::read(self.base().join(format!("log/qemu/{vm}-serial.log"))).unwrap_or_default();
        String::from_utf8_lossy(&raw).replace('\r', "")
    }
    pub fn wait_serial(&self, vm: &str, needle: &str, secs: u64) -> String {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let log = self.serial(vm);
            if log.contains(needle) {
                return log;
            }
            assert!(std::time::Instant::now() < until, "{needle} not seen there within {secs} s:\n{log}");
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    }
    pub fn state(&self, vm: &str) -> String {
        String::from_utf8_lossy(&self.virsh(&["domstate", vm]).stdout).trim().to_string()
    }
    /// Boots the VM there with another test action (its inactive definition edited there).
    pub fn boot_with(&self, vm: &str, action: &str) {
        let xml = self.virsh_ok(&["dumpxml", "--inactive", vm]);
        let re = with_cmdline(&xml, &format!("console=ttyS0 panic=-1 phyllome.test={action}"));
        let f = std::env::temp_dir().join(format!("{vm}-there.xml"));
        std::fs::write(&f, re).unwrap();
        self.virsh_ok(&["define", f.to_str().unwrap()]);
        let _ = std::fs::remove_file(f);
        let _ = std::fs::remove_file(self.base().join(format!("log/qemu/{vm}-serial.log")));
        self.virsh_ok(&["start", vm]);
    }
}

impl Drop for SecondHost {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/second-host.sh");
        let _ = Command::new(script).arg("stop").arg(&self.name).output();
    }
}

/// A direct-boot definition with another kernel command line.
pub fn with_cmdline(xml: &str, cmdline: &str) -> String {
    let (a, rest) = xml.split_once("<cmdline>").expect("a direct-boot domain");
    let (_, b) = rest.split_once("</cmdline>").unwrap();
    format!("{a}<cmdline>{cmdline}</cmdline>{b}")
}
