//! `phyllome serve` under the conditions issue 10 found it wanting: libvirtd
//! going away, bad input and states, logins from strangers, tokens to revoke,
//! and logs that must hold no secret and no forged line.

mod web_common;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use web_common::*;

/// A unix-socket relay to libvirtd's socket that the test can cut: what
/// the server sees when libvirtd stops, without stopping the real one.
struct Relay {
    path: std::path::PathBuf,
    open: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<UnixStream>>>,
}

impl Relay {
    fn new() -> Relay {
        let path = temp_dir("relay").join("libvirt.sock");
        let r = Relay { path, open: Arc::new(AtomicBool::new(false)), conns: Arc::default() };
        r.restore();
        r
    }

    fn uri(&self) -> String {
        format!("qemu+unix:///system?socket={}", self.path.display())
    }

    fn restore(&self) {
        let _ = std::fs::remove_file(&self.path);
        let l = UnixListener::bind(&self.path).unwrap();
        self.open.store(true, Ordering::SeqCst);
        let open = Arc::clone(&self.open);
        let conns = Arc::clone(&self.conns);
        std::thread::spawn(move || {
            for c in l.incoming() {
                if !open.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(c) = c else { continue };
                let Ok(up) = UnixStream::connect("/var/run/libvirt/libvirt-sock") else { continue };
                conns.lock().unwrap().extend([c.try_clone().unwrap(), up.try_clone().unwrap()]);
                let (mut a, mut b) = (c.try_clone().unwrap(), up.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Both);
                });
                let (mut a, mut b) = (up, c);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut a, &mut b);
                    let _ = b.shutdown(std::net::Shutdown::Both);
                });
            }
        });
    }

    /// Closes every relayed connection and refuses new ones.
    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        let _ = std::fs::remove_file(&self.path);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.path);
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn while_libvirtd_is_unreachable_answers_are_503_and_the_list_is_stale() {
    let relay = Relay::new();
    let uri = relay.uri();
    let server = Server::start(&["--connect", &uri]);
    let s = server.admin();
    let vm = TestVm::new("web-stale");
    define_foreign_domain(&vm);
    wait_for("the VM in the list", 30, || s.get("/api/v1/vms").text().contains(&vm.0));
    relay.cut();
    wait_for("a stale list", 20, || s.get("/api/v1/vms").status == 503);
    let r = s.get("/api/v1/vms");
    let v = r.json();
    assert_eq!((v["stale"].as_bool(), v["kind"].as_str()), (Some(true), Some("unavailable")), "{v}");
    assert!(v["since"].as_u64().is_some(), "{v}");
    assert!(v["vms"].as_array().unwrap().iter().any(|row| row["name"] == vm.0.as_str()), "the last list is kept: {v}");
    let r = s.get(&format!("/api/v1/vms/{}", vm.url_name()));
    assert_eq!(r.status, 503, "details while libvirtd is away: {}", r.text());
    assert_eq!(r.json()["kind"], "unavailable");
    let r = s.post(&format!("/api/v1/vms/{}/start", vm.url_name()), None);
    assert_eq!(r.status, 503, "an action while libvirtd is away: {}", r.text());
    relay.restore();
    wait_for("a live list again", 30, || s.get("/api/v1/vms").status == 200);
    assert!(s.get("/api/v1/vms").text().contains(&vm.0));
    assert!(!server.log_text().contains("panicked"), "{}", server.log_text());
}

#[test]
fn the_clients_mistakes_are_4xx_not_500() {
    require_guest();
    let server = Server::start(&[]);
    let s = server.admin();
    for path in ["/api/v1/vms/%00", "/api/v1/vms/a%00b/start", "/api/v1/vms/%ff%fe"] {
        let r = if path.ends_with("/start") { s.post(path, None) } else { s.get(path) };
        assert_eq!(r.status, 400, "{path}: {}", r.text());
        assert_eq!(r.json()["kind"], "invalid-input", "{path}");
    }
    // A VM on an isolated network that is defined but not started.
    let net = format!("{PREFIX}net-{}", std::process::id());
    let _ = virsh(&["net-destroy", &net]);
    let _ = virsh(&["net-undefine", &net]);
    let file = temp_dir("net").join("net.xml");
    std::fs::write(&file, format!("<network><name>{net}</name></network>")).unwrap();
    assert!(virsh(&["net-define", file.to_str().unwrap()]).status.success());
    struct Net(String);
    impl Drop for Net {
        fn drop(&mut self) {
            let _ = virsh(&["net-undefine", &self.0]);
        }
    }
    let _net = Net(net.clone());
    let vm = TestVm::new("web-net");
    let body = serde_json::json!({ "name": vm.0, "os": "linux", "network": net, "encryption": "none",
                                   "disk_size": "1GiB", "force": true, "memory": "512MiB" });
    let r = s.post("/api/v1/vms", Some(&body.to_string()));
    assert_eq!(r.status, 201, "{}", r.text());
    let r = s.post(&format!("/api/v1/vms/{}/start", vm.url_name()), None);
    assert_eq!(r.status, 409, "start on an inactive network: {}", r.text());
    assert_eq!(r.json()["kind"], "conflict");
    let networks = s.get("/api/v1/networks").json();
    let row = networks.as_array().unwrap().iter().find(|n| n["name"] == net.as_str()).cloned().unwrap();
    assert_eq!(row["active"], false, "{row}");
    // Creating and starting on it is refused before anything is made.
    let vm2 = TestVm::new("web-net2");
    let body = serde_json::json!({ "name": vm2.0, "os": "linux", "network": net, "encryption": "none",
                                   "disk_size": "1GiB", "force": true, "start": true });
    let r = s.post("/api/v1/vms", Some(&body.to_string()));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(!vm2.exists());
    // Unknown fields are refused, as the document says.
    let r = s.post("/api/v1/vms", Some(r#"{"name":"x","os":"linux","colour":"red"}"#));
    assert_eq!(r.status, 400, "{}", r.text());
    let doc = s.get("/api/v1/openapi.json").json();
    assert_eq!(
        doc["components"]["schemas"]["CreateBody"]["additionalProperties"], false,
        "{}",
        doc["components"]["schemas"]["CreateBody"]
    );
    let r = s.send("DELETE", &format!("/api/v1/vms/{}", vm.url_name()), None);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_stranger_cannot_lock_a_known_browser_out_and_logs_hold_no_secret() {
    let server = Server::start(&["--log-level", "debug", "--log-format", "json"]);
    let body = serde_json::json!({ "username": USER, "password": PASSWORD }).to_string();
    let r = server.request("POST", "/api/v1/login", &[("Content-Type", "application/json")], Some(&body));
    assert_eq!(r.status, 200, "{}", r.text());
    let device = r
        .headers
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .map(|(_, v)| v.split(';').next().unwrap().to_string())
        .find(|c| c.starts_with("phyllome_device="))
        .expect("a login sets a device cookie");
    let first = server.admin();
    for i in 0..6 {
        let _ = server.login(USER, &format!("guess number {i}"));
    }
    assert_eq!(server.login(USER, PASSWORD).err().unwrap().status, 429, "the stranger's address is not locked");
    let body = serde_json::json!({ "username": USER, "password": PASSWORD }).to_string();
    let r = server.request(
        "POST",
        "/api/v1/login",
        &[("Content-Type", "application/json"), ("Cookie", &device)],
        Some(&body),
    );
    assert_eq!(r.status, 200, "a browser that logged in before is locked out: {}", r.text());

    // Tokens: listed with their last use, revoked one by one (API and CLI).
    let make = || {
        let out = phyllome().args(["user", "token", USER, "--state-dir"]).arg(&server.state).output().unwrap();
        assert!(out.status.success());
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (t1, t2) = (make(), make());
    let bearer = |t: &str| format!("Bearer {t}");
    let get = |t: &str, path: &str| server.request("GET", path, &[("Authorization", &bearer(t))], None);
    assert_eq!(get(&t1, "/api/v1/vms").status, 200);
    let list = get(&t1, "/api/v1/tokens").json();
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let id = |t: &str| t.split('_').nth(1).unwrap().to_string();
    let used = list.as_array().unwrap().iter().find(|r| r["id"] == id(&t1).as_str()).unwrap();
    assert!(used["last_used"].as_u64().is_some(), "{list}");
    let r = server.request("DELETE", &format!("/api/v1/tokens/{}", id(&t2)), &[("Authorization", &bearer(&t1))], None);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(get(&t2, "/api/v1/vms").status, 401, "a revoked token still works");
    assert_eq!(get(&t1, "/api/v1/vms").status, 200, "revoking one token revoked another");
    std::thread::sleep(Duration::from_millis(2500));
    let out =
        phyllome().args(["user", "token", "--list", "--json", "--state-dir"]).arg(&server.state).output().unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert!(listed[0]["last_used"].as_u64().is_some(), "the last use is not written: {listed}");
    let out =
        phyllome().args(["user", "token", "--revoke", &id(&t1), "--state-dir"]).arg(&server.state).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(get(&t1, "/api/v1/vms").status, 401, "a token revoked by the CLI still works");

    // A forged log line and a terminal escape in a path reach neither the log nor a handler.
    let r = first.get("/api/v1/vms/x%0aphyllome%20serve%3a%20root%20logged%20in%20from%201.2.3.4%1b%5b31m");
    assert_eq!(r.status, 400);
    let log = server.log_text();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(log.contains("\"route\":\"/api/v1/vms\""), "request spans name their route:\n{log}");
    assert!(!log.contains('\u{1b}') && !log.contains("root logged in"), "a forged line reached the log:\n{log}");
    let device_value = device.split('=').nth(1).unwrap();
    for secret in [PASSWORD, &t1, &t2, &first.csrf, first.cookie.split('=').nth(1).unwrap(), device_value] {
        assert!(!log.contains(secret), "a secret reached the log: {secret}");
    }
}
