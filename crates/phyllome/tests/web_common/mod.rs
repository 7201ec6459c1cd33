//! Helpers for the tests of `phyllome serve`: the real server on a free
//! loopback port with a state directory of its own, a small HTTP/1.1 and
//! WebSocket client, and test VMs removed on drop however a test ends.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "../common/mod.rs"]
mod common;
// Each test binary uses a different part of these.
#[allow(unused_imports)]
pub use common::{serial_log, virsh, virsh_ok, volume_path, SecondHost, TestVm, GUEST, POOL_PATH, PREFIX, URI};
pub const USER: &str = "admin";
pub const PASSWORD: &str = "correct horse battery staple";

pub fn phyllome() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_phyllome"));
    c.env("PHYLLOME_CONNECT", URI);
    c
}

/// A fresh private directory under the test target dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("web-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `phyllome user add NAME` with the password on standard input.
pub fn add_user(state: &Path, name: &str, password: &str) -> std::process::Output {
    let mut child = phyllome()
        .args(["user", "add", name, "--state-dir"])
        .arg(state)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(format!("{password}\n").as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// A running `phyllome serve`, stopped (SIGTERM) on drop.
pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub url: String,
    pub state: PathBuf,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub log: Arc<Mutex<String>>,
}

impl Server {
    /// A server with one account (USER / PASSWORD), the test guest's folder as its ISO folder.
    pub fn start(extra: &[&str]) -> Server {
        let state = temp_dir("state");
        let out = add_user(&state, USER, PASSWORD);
        assert!(out.status.success(), "user add failed: {}", String::from_utf8_lossy(&out.stderr));
        Server::start_in(&state, extra)
    }

    pub fn start_in(state: &Path, extra: &[&str]) -> Server {
        Server::start_with_media(state, Path::new(GUEST), extra)
    }

    /// A server whose ISO folder is `media`.
    pub fn start_with_media(state: &Path, media: &Path, extra: &[&str]) -> Server {
        Server::start_with_env(state, media, extra, &[])
    }

    /// A server with more environment (the engine's test hooks, PHYLLOME_TEST_FAIL_AT...).
    pub fn start_with_env(state: &Path, media: &Path, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = phyllome();
        cmd.envs(env.iter().copied());
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--iso-dir"])
            .arg(media)
            .arg("--state-dir")
            .arg(state)
            .args(extra);
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(String::new()));
        {
            let lines = Arc::clone(&stdout);
            let out = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
            let log = Arc::clone(&log);
            let err = child.stderr.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    let mut l = log.lock().unwrap();
                    l.push_str(&line);
                    l.push('\n');
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = loop {
            if let Some(l) = stdout.lock().unwrap().iter().find(|l| l.contains("listening on ")) {
                break l.split("listening on ").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("phyllome serve exited ({status}): {}", log.lock().unwrap());
            }
            assert!(Instant::now() < deadline, "phyllome serve did not start: {}", log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        };
        // The banner is printed at once; let its last lines arrive.
        std::thread::sleep(Duration::from_millis(100));
        let addr = url.split("://").nth(1).unwrap().trim_end_matches('/').to_string();
        Server { child, addr, url, state: state.to_path_buf(), stdout, log }
    }

    pub fn stdout_text(&self) -> String {
        self.stdout.lock().unwrap().join("\n")
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
        http(&self.addr, method, path, headers, body)
    }

    /// Logs in through the API.
    pub fn login(&self, user: &str, password: &str) -> Result<Session, Resp> {
        let body = serde_json::json!({ "username": user, "password": password }).to_string();
        let r = self.request("POST", "/api/v1/login", &[("Content-Type", "application/json")], Some(&body));
        if r.status != 200 {
            return Err(r);
        }
        let set = r.header("set-cookie").expect("login sets a cookie").to_string();
        let cookie = set.split(';').next().unwrap().to_string();
        let csrf = r.json()["csrf"].as_str().unwrap().to_string();
        Ok(Session { addr: self.addr.clone(), cookie, csrf, set_cookie: set })
    }

    pub fn admin(&self) -> Session {
        self.login(USER, PASSWORD).unwrap_or_else(|r| panic!("login failed: {} {}", r.status, r.text()))
    }

    pub fn stop(&mut self) {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A logged-in API client.
#[derive(Clone)]
pub struct Session {
    pub addr: String,
    /// `NAME=VALUE`.
    pub cookie: String,
    pub csrf: String,
    pub set_cookie: String,
}

impl Session {
    pub fn get(&self, path: &str) -> Resp {
        http(&self.addr, "GET", path, &[("Cookie", &self.cookie)], None)
    }

    /// A state-changing request the way the web UI sends it (cookie, CSRF token, same origin).
    pub fn send(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let origin = format!("http://{}", self.addr);
        let mut h = vec![("Cookie", self.cookie.as_str()), ("X-CSRF-Token", self.csrf.as_str()), ("Origin", &origin)];
        if body.is_some() {
            h.push(("Content-Type", "application/json"));
        }
        http(&self.addr, method, path, &h, body)
    }

    pub fn post(&self, path: &str, body: Option<&str>) -> Resp {
        self.send("POST", path, body)
    }
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the body ended properly (for a chunked one: its last chunk came; false when the server aborted it).
    pub ended: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
}

fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// The body of a chunked answer, and whether it ended properly (the last, empty chunk came).
fn dechunk(mut data: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(pos) = data.windows(2).position(|w| w == b"\r\n") else { return (out, false) };
        let size = usize::from_str_radix(std::str::from_utf8(&data[..pos]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return (out, pos > 0);
        }
        data = &data[pos + 2..];
        out.extend_from_slice(&data[..size.min(data.len())]);
        data = &data[(size + 2).min(data.len())..];
    }
}

/// One HTTP/1.1 request on a new connection (`Connection: close`).
pub fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
    http_bytes(addr, method, path, headers, body.map(str::as_bytes))
}

/// [`http`] with a body of any bytes (a bundle, an image).
pub fn http_bytes(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    if let Some(b) = body {
        req.extend_from_slice(b);
    }
    s.write_all(&req).unwrap();
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP response head for {method} {path}: {:?}", String::from_utf8_lossy(&raw)));
    let (status, headers) = parse_head(&String::from_utf8_lossy(&raw[..split]));
    let mut body = raw[split + 4..].to_vec();
    let mut ended = true;
    if headers.iter().any(|(k, v)| k == "transfer-encoding" && v.contains("chunked")) {
        (body, ended) = dechunk(&body);
    }
    Resp { status, headers, body, ended }
}

/// Opens a WebSocket: Ok(stream) after a 101, Err(response) otherwise.
pub fn ws_connect(addr: &str, path: &str, headers: &[(&str, &str)]) -> Result<(TcpStream, Resp), Resp> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).unwrap_or(0) == 0 {
            break;
        }
        head.push(b[0]);
    }
    let (status, headers) = parse_head(&String::from_utf8_lossy(&head));
    if status == 101 {
        return Ok((s, Resp { status, headers, body: vec![], ended: true }));
    }
    // The connection stays open (keep-alive): read exactly the body.
    let len = headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = s.read_exact(&mut body);
    Err(Resp { status, headers, body, ended: true })
}

/// Reads one server frame: (opcode, payload).
pub fn ws_read(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).unwrap();
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).unwrap();
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).unwrap();
    (h[0] & 0x0f, p)
}

/// Sends one masked binary frame.
pub fn ws_send(s: &mut TcpStream, data: &[u8]) {
    assert!(data.len() < 126);
    let mask = [0x12u8, 0x34, 0x56, 0x78];
    let mut f = vec![0x82, 0x80 | data.len() as u8];
    f.extend_from_slice(&mask);
    f.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&f).unwrap();
}

impl TestVm {
    /// Percent-encoded for a URL path.
    pub fn url_name(&self) -> String {
        encode(&self.0)
    }
}

pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Defines a stopped domain named `name` (any characters but '/') straight in libvirt.
pub fn define_foreign_domain(vm: &TestVm) {
    let esc = vm.0.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let xml = format!(
        "<domain type='qemu'><name>{esc}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type></os><devices/></domain>"
    );
    let file = temp_dir("domxml").join("d.xml");
    std::fs::write(&file, xml).unwrap();
    let out = virsh(&["define", file.to_str().unwrap()]);
    assert!(out.status.success(), "cannot define {}: {}", vm.0, String::from_utf8_lossy(&out.stderr));
}

pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn require_guest() {
    assert!(
        Path::new(GUEST).join("vmlinuz").exists(),
        "the test guest is missing: run scripts/build-test-guest.sh (scripts/test.sh does)"
    );
}

/// The create request for the project's test guest (direct kernel boot from the ISO folder).
pub fn guest_create_body(name: &str, start: bool) -> String {
    serde_json::json!({
        "name": name, "os": "linux", "memory": "512M", "disk_size": "4G", "network": "none",
        "kernel": "vmlinuz", "initrd": "initrd.img", "cmdline": "console=ttyS0 panic=-1", "start": start
    })
    .to_string()
}

/// Reads server-sent events from `stream` (into `buf`) until one named `name` satisfies `want`; its data.
pub fn wait_event(
    stream: &mut TcpStream,
    buf: &mut String,
    name: &str,
    secs: u64,
    want: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    loop {
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                if event.contains(&format!("event: {name}\n")) {
                    let v: serde_json::Value = serde_json::from_str(data).unwrap();
                    if want(&v) {
                        return v;
                    }
                }
            }
        }
        assert!(Instant::now() < deadline, "no matching {name} event within {secs} s; have {buf:?}");
        let mut chunk = [0u8; 4096];
        if let Ok(n) = stream.read(&mut chunk) {
            // Chunked encoding: the size lines are harmless to the event parser as they hold no "data: ".
            buf.push_str(&String::from_utf8_lossy(&chunk[..n]).replace("\r\n", "\n"));
        }
    }
}

/// The browser tests' folder (tests/browser), with playwright-core and Chromium there.
pub fn browser_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "playwright-core is missing: run scripts/setup.sh (npm ci in {})",
        dir.display()
    );
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Chromium is missing: run scripts/setup.sh (apt-get install chromium)"
    );
    dir
}

/// Runs tests/browser/SCRIPT in node with `config` (JSON) on its standard input, and asserts
/// that every check of it passed (its output and the server's log are shown when one did not).
pub fn run_browser(server: &Server, script: &str, config: &serde_json::Value) {
    let dir = browser_dir();
    let mut child = Command::new("node")
        .arg(dir.join(script))
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node must be installed: run scripts/setup.sh");
    child.stdin.take().unwrap().write_all(config.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Shown by cargo test when the test fails (and with --nocapture).
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let summary = stdout.lines().find(|l| l.starts_with("browser: ")).unwrap_or("browser: no summary");
    assert!(out.status.success(), "{summary}; server log:\n{}", server.log_text());
    assert!(summary.ends_with(" 0 failed"), "{summary}");
}
