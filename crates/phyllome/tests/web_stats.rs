//! `phyllome stats`, `/api/v1/stats` and `/metrics` on real guests: one test
//! guest spins a CPU and writes its disk without end, another sits idle at
//! its shell; the figures must tell them apart.

mod web_common;
use std::process::Command;
use web_common::*;

/// One test at a time: each measures guests that spin a CPU, and two at once on a small host
/// would measure each other.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn create(vm: &TestVm, cmdline: &str) {
    require_guest();
    let out = phyllome()
        .args(["create", &vm.0, "--os", "linux", "--memory", "512M", "--disk-size", "4G", "--network", "none"])
        .args(["--kernel", &format!("{GUEST}/vmlinuz"), "--initrd", &format!("{GUEST}/initrd.img")])
        .args(["--cmdline", &format!("console=ttyS0 panic=-1 {cmdline}"), "--start"])
        .output()
        .unwrap();
    assert!(out.status.success(), "create {}: {}", vm.0, String::from_utf8_lossy(&out.stderr));
}

fn stats_json(args: &[&str]) -> serde_json::Value {
    let out = phyllome().arg("stats").args(args).arg("--json").output().unwrap();
    assert!(out.status.success(), "stats: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn vm<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["vms"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("{name} in {report}"))
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The value of a sample line `NAME{...vm="VM"...} VALUE` in Prometheus text.
fn metric(text: &str, name: &str, vm: &str) -> Option<f64> {
    let label = format!("vm=\"{vm}\"");
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_busy_guest_and_an_idle_one_are_told_apart_by_stats_api_and_metrics() {
    let _one = one_at_a_time();
    let busy = TestVm::new("stats-busy");
    let idle = TestVm::new("stats-idle");
    create(&busy, "phyllome.test=busy");
    create(&idle, "");
    wait_for("the busy guest to start its load", 120, || serial_log(&busy.0).contains("PHYLLOME-BUSY"));
    wait_for("the idle guest's shell", 120, || serial_log(&idle.0).contains("PHYLLOME-READY"));
    // The idle guest's boot is over; give its balloon driver one stats period (10 s).
    std::thread::sleep(std::time::Duration::from_secs(3));

    // CLI: rates over 3 s.
    let r = stats_json(&[&busy.0, &idle.0, "--interval", "3"]);
    let (b, i) = (vm(&r, &busy.0), vm(&r, &idle.0));
    assert_eq!(b["state"], "running");
    assert!(f(&b["cpu_percent"]) > 50.0, "a spinning vCPU shows: {b}");
    assert!(f(&b["disk"]["write_bytes_per_sec"]) > 1e6, "the writing guest shows: {b}");
    assert!(f(&b["disk"]["write_iops"]) > 1.0, "{b}");
    assert!(f(&i["cpu_percent"]) < 25.0, "an idle guest is near 0: {i}");
    assert!(f(&i["disk"]["write_bytes_per_sec"]) < 100e3, "an idle guest writes ~nothing: {i}");
    assert_eq!(f(&b["memory"]["assigned_bytes"]), 512.0 * 1024.0 * 1024.0, "{b}");
    assert!(f(&b["memory"]["host_rss_bytes"]) > 10e6, "QEMU's RSS: {b}");
    assert!(f(&b["uptime_secs"]) >= 1.0 && f(&b["uptime_secs"]) < 600.0, "{b}");
    assert!(r["host"]["vms_running"].as_u64().unwrap() >= 2, "{r}");
    assert!(r["host"]["vcpus_committed"].as_u64().unwrap() >= 2, "{r}");
    assert!(f(&r["host"]["memory_bytes"]) > 1e9, "{r}");
    // The balloon driver of the test guest reports what the guest uses.
    let used = &i["memory"]["used_bytes"];
    assert!(used.is_null() || f(used) < 512.0 * 1024.0 * 1024.0, "{i}");

    // The table says the same, and a named VM that is not running is shown so.
    let stopped = TestVm::new("stats-stopped");
    define_foreign_domain(&stopped);
    let out = phyllome().args(["stats", &busy.0, &stopped.0, "--interval", "0.5"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("CPU%") && text.contains(&busy.0), "{text}");
    assert!(text.lines().any(|l| l.starts_with(&stopped.0) && l.contains("shut off")), "{text}");

    // Bad input: an unknown VM, a bad interval; top without a terminal.
    let out = phyllome().args(["stats", "phyllome-test-no-such-vm", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(4), "not found exits 4");
    let err: serde_json::Value = serde_json::from_slice(&out.stderr).unwrap();
    assert_eq!(err["kind"], "not-found", "{err}");
    let out = phyllome().args(["stats", "--interval", "0"]).output().unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("between 0.1 and 3600"));
    let out = phyllome().arg("top").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a terminal"), "{out:?}");

    // top in a real terminal (script(1) gives it a pty): draws the VMs, and q quits.
    let bin = env!("CARGO_BIN_EXE_phyllome");
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &format!("{bin} top --interval 0.5"), "/dev/null"])
        .env("PHYLLOME_CONNECT", URI)
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    std::io::Write::write_all(&mut stdin, b"q").unwrap();
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "top: {screen} {}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "q quits at once");
    assert!(screen.contains("CPU%") && screen.contains(&busy.0) && screen.contains("q quits"), "{screen}");
    drop(stdin);

    // The server: /api/v1/stats, a VM's ring, and /metrics.
    let server = Server::start(&[]);
    let token = |metrics: bool| {
        let mut c = phyllome();
        c.args(["user", "token", USER, "--state-dir"]).arg(&server.state);
        if metrics {
            c.arg("--metrics");
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        format!("Bearer {}", String::from_utf8_lossy(&out.stdout).trim())
    };
    let (api, metrics_token) = (token(false), token(true));
    wait_for("the first sample", 20, || {
        server.request("GET", "/api/v1/stats", &[("Authorization", &api)], None).status == 200
    });
    let scrape = |auth: &str| server.request("GET", "/metrics", &[("Authorization", auth)], None);
    wait_for("rates in /api/v1/stats", 20, || {
        let r = server.request("GET", "/api/v1/stats", &[("Authorization", &api)], None).json();
        r["vms"]
            .as_array()
            .is_some_and(|v| v.iter().any(|v| v["name"] == busy.0.as_str() && v["cpu_percent"].is_number()))
    });
    let first = scrape(&metrics_token);
    assert_eq!(first.status, 200, "{}", first.text());
    std::thread::sleep(std::time::Duration::from_secs(3));
    let second = scrape(&metrics_token);
    let (m1, m2) = (first.text(), second.text());
    let rise = |name: &str, vm: &str| {
        let (a, b) = (metric(&m1, name, vm), metric(&m2, name, vm));
        b.unwrap_or_else(|| panic!("{name} of {vm} missing:\n{m2}")) - a.unwrap()
    };
    assert!(rise("phyllome_vm_cpu_seconds_total", &busy.0) > 1.0, "3 s of a spinning vCPU:\n{m2}");
    assert!(rise("phyllome_vm_disk_written_bytes_total", &busy.0) > 3e6, "{m2}");
    assert!(rise("phyllome_vm_cpu_seconds_total", &idle.0) < 0.75, "{m2}");
    assert!(rise("phyllome_vm_disk_written_bytes_total", &idle.0) < 300e3, "{m2}");
    assert!(metric(&m2, "phyllome_vm_memory_assigned_bytes", &busy.0) == Some(536870912.0), "{m2}");
    assert!(m2.contains("phyllome_host_vms_running{host="), "{m2}");

    // promtool, Prometheus' own linter, takes it (the classic text format; OpenMetrics on request).
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/setup.sh installs it)");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), m2.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let om = server.request(
        "GET",
        "/metrics",
        &[("Authorization", &metrics_token), ("Accept", "application/openmetrics-text; version=1.0.0")],
        None,
    );
    assert!(om.header("content-type").unwrap_or("").starts_with("application/openmetrics-text"));
    assert!(om.text().trim_end().ends_with("# EOF"));

    // Refused without a token, and a metrics token reads nothing else.
    assert_eq!(server.request("GET", "/metrics", &[], None).status, 401);
    assert_eq!(scrape("Bearer phyllome_0000_nope").status, 401);
    assert_eq!(server.request("GET", "/api/v1/vms", &[("Authorization", &metrics_token)], None).status, 403);
    assert_eq!(server.request("GET", "/api/v1/stats", &[("Authorization", &metrics_token)], None).status, 403);
    // A session (the UI) reads /api/v1/stats; the ring of a VM grows a point a second.
    let s = server.admin();
    let h1 = s.get(&format!("/api/v1/vms/{}/stats", busy.0)).json();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let h2 = s.get(&format!("/api/v1/vms/{}/stats", busy.0)).json();
    let n = |h: &serde_json::Value| h["points"].as_array().unwrap().len();
    assert!(n(&h2) >= n(&h1) + 2, "{} then {} points", n(&h1), n(&h2));
    let last = h2["points"].as_array().unwrap().last().unwrap();
    assert!(f(&last["cpu_percent"]) > 50.0 && f(&last["disk_write_bytes_per_sec"]) > 1e6, "{last}");
    assert_eq!(h2["current"]["name"], busy.0.as_str());
    assert_eq!(s.get("/api/v1/vms/phyllome-test-no-such-vm/stats").status, 404);
    let st = s.get(&format!("/api/v1/vms/{}/stats", stopped.0));
    assert_eq!(st.status, 200, "a VM that exists but never ran has an empty history");
    assert!(st.json()["current"].is_null());
}

/// A VM's QEMU stopped with SIGSTOP (it takes no command, libvirtd still answers), and
/// continued on drop, before the VM's own guard removes it.
struct Stopped(u32);

impl Stopped {
    fn qemu_of(vm: &TestVm) -> Stopped {
        let pid: u32 =
            std::fs::read_to_string(format!("/run/libvirt/qemu/{}.pid", vm.0)).unwrap().trim().parse().unwrap();
        assert!(Command::new("kill").args(["-STOP", &pid.to_string()]).status().unwrap().success());
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0.to_string()]).stderr(std::process::Stdio::null()).status();
    }
}

/// `phyllome ARGS` that must end within `secs`; its output.
fn bounded(args: &[&str], secs: u64) -> std::process::Output {
    let mut child = phyllome()
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > std::time::Duration::from_secs(secs) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("phyllome {args:?} did not answer within {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn a_stuck_vm_is_reported_as_such_and_the_others_are_served() {
    let _one = one_at_a_time();
    let frozen = TestVm::new("stats-frozen");
    let other = TestVm::new("stats-other");
    create(&frozen, "");
    create(&other, "phyllome.test=busy");
    wait_for("the frozen guest's shell", 120, || serial_log(&frozen.0).contains("PHYLLOME-READY"));
    wait_for("the other guest's load", 120, || serial_log(&other.0).contains("PHYLLOME-BUSY"));
    let stop = Stopped::qemu_of(&frozen);

    // The CLI: within a bound, the stuck VM said so, the other one measured.
    let out = bounded(&["stats", "--json", "--interval", "2"], 20);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (s, o) = (vm(&r, &frozen.0), vm(&r, &other.0));
    assert_eq!(s["state"], "stuck", "{s}");
    assert!(s["disk"]["write_bytes_per_sec"].is_null() && s["disk"]["written_bytes"].is_null(), "{s}");
    assert_eq!(o["state"], "running", "{o}");
    assert!(f(&o["cpu_percent"]) > 10.0 && f(&o["disk"]["write_bytes_per_sec"]) > 1e5, "{o}");
    let out = bounded(&["stats", &frozen.0, &other.0, "--interval", "0.5"], 20);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with(&frozen.0) && l.contains("stuck")), "{text}");
    assert!(text.contains(&format!("stuck: {}: its QEMU has not answered", frozen.0)), "{text}");

    // The server: /metrics answers with the other VM's series and the stuck one marked; so does the API.
    let server = Server::start(&[]);
    let out = phyllome().args(["user", "token", USER, "--metrics", "--state-dir"]).arg(&server.state).output().unwrap();
    let token = format!("Bearer {}", String::from_utf8_lossy(&out.stdout).trim());
    let mut last = String::new();
    wait_for("/metrics with both VMs", 30, || {
        let r = server.request("GET", "/metrics", &[("Authorization", &token)], None);
        last = r.text();
        r.status == 200
            && metric(&last, "phyllome_vm_stuck", &frozen.0) == Some(1.0)
            && metric(&last, "phyllome_vm_disk_written_bytes_total", &other.0).is_some()
    });
    assert_eq!(metric(&last, "phyllome_vm_stuck", &other.0), Some(0.0), "{last}");
    assert!(metric(&last, "phyllome_vm_cpu_seconds_total", &other.0).is_some(), "{last}");
    // For 10 s, every scrape answers 200 and the other VM's figures go on.
    let s = server.admin();
    for _ in 0..10 {
        let m = server.request("GET", "/metrics", &[("Authorization", &token)], None);
        assert_eq!(m.status, 200, "{}", m.text());
        let st = s.get("/api/v1/stats");
        assert_eq!(st.status, 200, "{}", st.text());
        let v = st.json();
        assert_eq!(vm(&v, &frozen.0)["state"], "stuck", "{v}");
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    let rates = s.get("/api/v1/stats").json();
    assert!(f(&vm(&rates, &other.0)["cpu_percent"]) > 10.0, "{rates}");

    // Continued, it answers again.
    drop(stop);
    wait_for("the VM to answer again", 30, || {
        let v = s.get("/api/v1/stats").json();
        v["vms"].as_array().is_some_and(|l| l.iter().any(|x| x["name"] == frozen.0.as_str() && x["state"] == "running"))
    });
}

#[test]
fn vms_coming_and_going_never_turn_a_scrape_into_503() {
    let _one = one_at_a_time();
    let server = Server::start(&["--log-level", "debug"]);
    let out = phyllome().args(["user", "token", USER, "--state-dir"]).arg(&server.state).output().unwrap();
    let token = format!("Bearer {}", String::from_utf8_lossy(&out.stdout).trim());
    wait_for("the first sample", 20, || {
        server.request("GET", "/api/v1/stats", &[("Authorization", &token)], None).status == 200
    });
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (addr, auth, stop) = (server.addr.clone(), token.clone(), std::sync::Arc::clone(&done));
    let scraper = std::thread::spawn(move || {
        let mut seen = vec![];
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            for path in ["/metrics", "/api/v1/stats"] {
                let r = http(&addr, "GET", path, &[("Authorization", &auth)], None);
                seen.push((path, r.status, r.text()));
            }
            std::thread::sleep(std::time::Duration::from_millis(150));
        }
        seen
    });
    for i in 0..3 {
        let vm = TestVm::new(&format!("stats-churn-{i}"));
        create(&vm, "");
        std::thread::sleep(std::time::Duration::from_secs(2));
        // The last one goes slowly: its QEMU stopped, libvirt holds the VM for the 10 s its SIGTERM
        // waits before SIGKILL, and every VM's statistics wait for it meanwhile.
        let _stopped = (i == 2).then(|| Stopped::qemu_of(&vm));
        let out = phyllome().args(["kill", &vm.0]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let out = phyllome().args(["delete", &vm.0]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = scraper.join().unwrap();
    let bad: Vec<_> = seen.iter().filter(|(_, status, _)| *status != 200).collect();
    assert!(seen.len() > 40, "only {} scrapes", seen.len());
    let log: Vec<String> = server.log_text().lines().filter(|l| l.contains("stats sample")).map(String::from).collect();
    assert!(
        bad.is_empty(),
        "{} of {} scrapes failed: {:?}\n{}",
        bad.len(),
        seen.len(),
        &bad[..bad.len().min(5)],
        log.join("\n")
    );
}
