//! `phyllome serve` with several hosts: a real second libvirtd
//! (scripts/second-host.sh) named in a hosts file of the test's own. One
//! server lists the VMs of both, each with its host, from each host's own
//! connection and events; a host whose libvirtd goes away marks only its own
//! VMs unreachable, and they come back with it. The migration check through
//! the API names hosts, never URIs. The same in a real browser
//! (tests/browser/hosts.test.mjs): the list with hosts, the migrate dialog's
//! check, and a host going away and coming back.

mod web_common;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use web_common::*;

const H2: &str = "h2";

/// The second host's `crash`/`restart` (second-host.sh): its libvirtd killed or started again, its domains kept.
fn second_host(cmd: &str, h: &SecondHost) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/second-host.sh");
    let out = std::process::Command::new(script).arg(cmd).arg(&h.name).output().unwrap();
    assert!(out.status.success(), "second-host.sh {cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A never-started domain of 64 MiB with no disk, defined there.
fn define_there(h: &SecondHost, name: &str) {
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type></os><devices/></domain>"
    );
    let file = temp_dir("domxml-there").join("d.xml");
    std::fs::write(&file, xml).unwrap();
    h.virsh_ok(&["define", file.to_str().unwrap()]);
}

/// A server whose hosts file names the second host as `h2`; its pending-migration records are
/// in `DIR/pending` (DIR returned with it).
fn server_with(h: &SecondHost) -> (Server, PathBuf) {
    let dir = temp_dir("hosts");
    let file = dir.join("hosts.toml");
    std::fs::write(&file, format!("[[host]]\nname = \"{H2}\"\nuri = \"{}\"\n", h.uri)).unwrap();
    let state = temp_dir("state");
    let out = add_user(&state, USER, PASSWORD);
    assert!(out.status.success(), "user add failed: {}", String::from_utf8_lossy(&out.stderr));
    let pending = dir.join("pending");
    let server = Server::start_with_env(
        &state,
        Path::new(GUEST),
        &[],
        &[
            ("PHYLLOME_TEST_HOSTS_FILE", file.to_str().unwrap()),
            ("PHYLLOME_TEST_PENDING_MIGRATIONS", pending.to_str().unwrap()),
        ],
    );
    (server, dir)
}

fn row<'a>(list: &'a Value, host: &str, name: &str) -> Option<&'a Value> {
    list.as_array().unwrap().iter().find(|r| r["host"] == host && r["name"] == name)
}

fn host_state(s: &Session, name: &str) -> String {
    let hosts = s.get("/api/v1/hosts").json();
    let h = hosts.as_array().unwrap().iter().find(|h| h["name"] == name).unwrap_or_else(|| panic!("{hosts}"));
    h["state"].as_str().unwrap().to_string()
}

#[test]
fn one_server_lists_both_hosts_and_an_unreachable_host_marks_only_its_vms() {
    let h2 = SecondHost::start("serve", &[]);
    let here = TestVm::new("web-hosts-here");
    define_foreign_domain(&here);
    // Removed with the second host (second-host.sh stop undefines everything there).
    let there = format!("{PREFIX}web-hosts-there-{}", std::process::id());
    define_there(&h2, &there);
    let (server, hosts_dir) = server_with(&h2);
    let s = server.admin();
    assert!(server.stdout_text().contains("VMs of this host (local) and of h2"), "{}", server.stdout_text());

    // Both hosts' VMs, each with its host, from the first request on.
    let r = s.get("/api/v1/vms");
    assert_eq!(r.status, 200, "{}", r.text());
    let list = r.json();
    let a = row(&list, "local", &here.0).unwrap_or_else(|| panic!("the local VM is missing: {list}"));
    let b = row(&list, H2, &there).unwrap_or_else(|| panic!("the second host's VM is missing: {list}"));
    assert_eq!((a["unreachable"].as_bool(), b["unreachable"].as_bool()), (Some(false), Some(false)));
    assert_eq!((b["state"].as_str(), b["memory_mib"].as_u64()), (Some("shut off"), Some(64)));
    assert!(row(&list, "local", &there).is_none() && row(&list, H2, &here.0).is_none(), "{list}");
    let hosts = s.get("/api/v1/hosts").json();
    let names: Vec<_> = hosts.as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["local", H2], "{hosts}");
    assert_eq!(host_state(&s, H2), "up");
    assert!(!hosts.to_string().contains(&h2.uri), "the hosts list shows no URI: {hosts}");

    // The second host's VM is addressed with ?host=: its page and libvirt-only actions, nothing of this host's files.
    let q = format!("/api/v1/vms/{}?host={H2}", encode(&there));
    let page = s.get(&q);
    assert_eq!(page.status, 200, "{}", page.text());
    assert_eq!((page.json()["name"].as_str(), page.json()["console"].as_bool()), (Some(there.as_str()), Some(false)));
    assert_eq!(s.get(&format!("/api/v1/vms/{}", encode(&there))).status, 404, "without host= it is this host's VM");
    let kill = s.post(&format!("/api/v1/vms/{}/kill?host={H2}", encode(&there)), None);
    assert_eq!(kill.status, 409, "kill of a shut-off VM there: {}", kill.text());
    assert!(server.log_text().contains(&format!("admin: kill {there} on host h2")), "{}", server.log_text());
    let start = s.post(&format!("/api/v1/vms/{}/start?host={H2}", encode(&there)), None);
    assert_eq!(start.status, 422, "start there reads this host's files: {}", start.text());
    assert!(start.text().contains("host=local"), "{}", start.text());
    let nope = s.get(&format!("/api/v1/vms/{}?host=nope", encode(&there)));
    assert_eq!(nope.status, 404, "{}", nope.text());
    assert!(nope.text().contains("no host named nope"), "{}", nope.text());

    // A page's event stream tells the hosts too.
    let mut stream = std::net::TcpStream::connect(&server.addr).unwrap();
    {
        use std::io::Write;
        write!(stream, "GET /api/v1/events HTTP/1.1\r\nHost: {}\r\nCookie: {}\r\n\r\n", server.addr, s.cookie).unwrap();
    }
    let mut buf = String::new();
    let h2_is = |state: &'static str| {
        move |v: &Value| v.as_array().unwrap().iter().any(|h| h["name"] == H2 && h["state"] == state)
    };
    wait_event(&mut stream, &mut buf, "hosts", 10, h2_is("up"));

    // The second host's libvirtd goes away: its VM stays, marked unreachable; this host's is untouched.
    second_host("crash", &h2);
    let t = Instant::now();
    wait_event(&mut stream, &mut buf, "vms", 20, |v| {
        row(v, H2, &there).is_some_and(|r| r["unreachable"] == true)
            && row(v, "local", &here.0).is_some_and(|r| r["unreachable"] == false)
    });
    let took = t.elapsed();
    assert!(took < Duration::from_secs(10), "noticed after {took:?}");
    let r = s.get("/api/v1/vms");
    assert_eq!(r.status, 200, "another host's outage is not this host's: {}", r.text());
    let list = r.json();
    assert_eq!(row(&list, H2, &there).unwrap()["unreachable"], true, "{list}");
    assert_eq!(row(&list, "local", &here.0).unwrap()["unreachable"], false, "{list}");
    assert_eq!(host_state(&s, H2), "down");
    let hosts = s.get("/api/v1/hosts").json();
    let down_h2 = hosts.as_array().unwrap().iter().find(|h| h["name"] == H2).unwrap();
    assert!(down_h2["since"].as_u64().is_some() && down_h2["error"].is_string(), "{hosts}");
    assert!(!hosts.to_string().contains(&h2.uri), "the hosts list shows no URI: {hosts}");
    let down = s.get(&q);
    assert_eq!(down.status, 503, "{}", down.text());
    assert!(down.text().contains("host h2 cannot be reached"), "{}", down.text());
    // This host's list still follows its events meanwhile.
    let new_here = TestVm::new("web-hosts-here2");
    define_foreign_domain(&new_here);
    wait_event(&mut stream, &mut buf, "vms", 10, |v| row(v, "local", &new_here.0).is_some());

    // It comes back: its VM is reachable again, read afresh.
    second_host("restart", &h2);
    wait_event(&mut stream, &mut buf, "vms", 20, |v| row(v, H2, &there).is_some_and(|r| r["unreachable"] == false));
    wait_for("h2 up in GET /api/v1/hosts", 10, || host_state(&s, H2) == "up");
    assert_eq!(s.get(&q).status, 200);
    // And its events flow again: a domain defined there now appears.
    let later = format!("{PREFIX}web-hosts-later-{}", std::process::id());
    define_there(&h2, &later);
    wait_event(&mut stream, &mut buf, "vms", 10, |v| row(v, H2, &later).is_some());
    assert!(!server.log_text().contains(&s.csrf), "the log holds no CSRF token");
    drop(stream);
    drop(server);
    let _ = std::fs::remove_dir_all(hosts_dir);
}

#[test]
fn migrate_check_through_the_api_names_hosts_and_shows_the_items() {
    let h2 = SecondHost::start("servecheck", &[]);
    let vm = TestVm::new("web-hosts-check");
    define_foreign_domain(&vm);
    let (server, hosts_dir) = server_with(&h2);
    let s = server.admin();
    let check = format!("/api/v1/vms/{}/migrate/check", vm.url_name());
    // A shut-off VM asked to move live: not ok, and the state item says why.
    let r = s.post(&check, Some(&serde_json::json!({ "to": H2, "live": true }).to_string()));
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    assert_eq!((c["ok"].as_bool(), c["mode"].as_str(), c["to"].as_str()), (Some(false), Some("live"), Some(H2)), "{c}");
    let state = c["items"].as_array().unwrap().iter().find(|i| i["what"] == "state").unwrap_or_else(|| panic!("{c}"));
    assert_eq!(state["ok"], false, "{c}");
    assert!(state["detail"].as_str().unwrap().contains("running"), "{c}");
    // Without `live`, its state chooses: offline for a shut-off VM.
    let r = s.post(&check, Some(&serde_json::json!({ "to": H2 }).to_string()));
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    assert_eq!(c["mode"], "offline", "{c}");
    let state = c["items"].as_array().unwrap().iter().find(|i| i["what"] == "state").unwrap();
    assert_eq!(state["ok"], true, "{c}");
    // Destinations are configured hosts by name: never a URI, never this host.
    for (to, status) in [(h2.uri.as_str(), 404), ("nope", 404), ("local", 400)] {
        let r = s.post(&check, Some(&serde_json::json!({ "to": to }).to_string()));
        assert_eq!(r.status, status, "to {to}: {}", r.text());
    }
    let r = s.post(&check, Some(r#"{"to":"h2","uri":"qemu:///system"}"#));
    assert_eq!(r.status, 400, "unknown fields are refused: {}", r.text());
    // A VM of another host cannot be the source (its files are not here).
    let r = s.post(&format!("{check}?host={H2}"), Some(&serde_json::json!({ "to": H2 }).to_string()));
    assert_eq!(r.status, 422, "{}", r.text());
    // No such VM.
    let r = s.post("/api/v1/vms/phyllome-test-none/migrate/check", Some(r#"{"to":"h2"}"#));
    assert_eq!(r.status, 404, "{}", r.text());
    // The move itself checks first and refuses (this domain has no Phyllome disk): nothing happens anywhere.
    let r = s.post(&format!("/api/v1/vms/{}/migrate", vm.url_name()), Some(r#"{"to":"h2"}"#));
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(vm.exists(), "a refused move removed the VM");
    assert!(!h2.virsh_ok(&["list", "--all", "--name"]).contains(&vm.0), "a refused move left the VM there");
    // The answers name the host, never its URI; the log says who asked.
    assert!(!r.text().contains(&h2.uri), "{}", r.text());
    let log = server.log_text();
    assert!(log.contains(&format!("admin: migrate {} to host h2", vm.0)), "{log}");

    // `phyllome host clean` through the API: nothing cut short yet.
    let clean = |q: &str| s.post(&format!("/api/v1/hosts/{H2}/clean{q}"), None);
    let r = clean("?dry_run=true");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"host": H2, "dry_run": true, "moves": []}));
    for (host, status) in [("nope", 404), ("local", 400)] {
        let r = s.post(&format!("/api/v1/hosts/{host}/clean"), None);
        assert_eq!(r.status, status, "{host}: {}", r.text());
    }
    // A move of the VM recorded by a process that runs (the server's own): the VM is said to be
    // migrating, does not start, and a clean only says so, naming the host, never its URI.
    let uuid = virsh_ok(&["domuuid", &vm.0]).trim().to_string();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap().trim().to_string();
    let record = serde_json::json!({
        "vm": vm.0, "uuid": uuid, "to": h2.uri, "from": URI, "pid": server.pid(), "boot_id": boot_id,
        "pool": null, "secret": null, "volume": format!("{}.qcow2", vm.0), "volume_key": null, "files": []
    });
    let pending = hosts_dir.join("pending");
    std::fs::create_dir_all(&pending).unwrap();
    std::fs::write(pending.join(format!("{uuid}.json")), record.to_string()).unwrap();
    let page = s.get(&format!("/api/v1/vms/{}", vm.url_name())).json();
    assert_eq!(page["state_reason"], "migrating", "{page}");
    let r = s.post(&format!("/api/v1/vms/{}/start", vm.url_name()), None);
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.text().contains("is not settled") && r.text().contains("is moving it now"), "{}", r.text());
    assert_eq!(vm.state(), "shut off");
    let r = clean("");
    assert_eq!(r.status, 200, "{}", r.text());
    let c = r.json();
    let first = &c["moves"][0];
    assert_eq!((first["outcome"].as_str(), first["to"].as_str()), (Some("in-progress"), Some(H2)), "{c}");
    assert!(!r.text().contains(&h2.uri), "{}", r.text());
    assert!(pending.join(format!("{uuid}.json")).exists(), "a move under way was settled");
    drop(server);
    let _ = std::fs::remove_dir_all(hosts_dir);
}

#[test]
fn web_ui_shows_hosts_the_migration_check_and_an_unreachable_host_in_chromium() {
    browser_dir();
    let h2 = SecondHost::start("serveui", &[]);
    let here = TestVm::new("web-hosts-ui");
    define_foreign_domain(&here);
    let there = format!("{PREFIX}web-hosts-ui-there-{}", std::process::id());
    define_there(&h2, &there);
    let (server, hosts_dir) = server_with(&h2);
    let artifacts = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("artifacts/web-ui-hosts");
    let _ = std::fs::remove_dir_all(&artifacts);
    let config = serde_json::json!({
        "url": server.url, "user": USER, "password": PASSWORD, "here": here.0, "there": there,
        "host": H2, "hostName": h2.name, "artifacts": artifacts,
    });
    run_browser(&server, "hosts.test.mjs", &config);
    for shot in ["h1-two-hosts", "h2-migrate-check", "h3-host-unreachable"] {
        assert!(artifacts.join(format!("{shot}.png")).is_file(), "no screenshot {shot}");
    }
    drop(server);
    let _ = std::fs::remove_dir_all(hosts_dir);
}

#[test]
fn a_vm_moves_to_the_other_host_through_the_api_with_progress_and_the_list_follows() {
    require_guest();
    let h2 = SecondHost::start("servemove", &[]);
    let vm = TestVm::new("web-hosts-move");
    let (server, hosts_dir) = server_with(&h2);
    let s = server.admin();
    let r = s.post("/api/v1/vms", Some(&guest_create_body(&vm.0, true)));
    assert_eq!(r.status, 201, "{}", r.text());
    // Booted once (its UEFI variables made), then off: an offline move.
    let kill = s.post(&format!("/api/v1/vms/{}/kill", vm.url_name()), None);
    assert_eq!(kill.status, 200, "{}", kill.text());
    wait_for("the VM shut off", 30, || vm.state() == "shut off");
    let check = s.post(&format!("/api/v1/vms/{}/migrate/check", vm.url_name()), Some(r#"{"to":"h2"}"#));
    let c = check.json();
    assert_eq!((c["ok"].as_bool(), c["mode"].as_str()), (Some(true), Some("offline")), "{c}");
    // The move, as the UI asks for it: progress events, then done.
    let origin = format!("http://{}", server.addr);
    let r = http(
        &server.addr,
        "POST",
        &format!("/api/v1/vms/{}/migrate", vm.url_name()),
        &[
            ("Cookie", &s.cookie),
            ("X-CSRF-Token", &s.csrf),
            ("Origin", &origin),
            ("Content-Type", "application/json"),
            ("Accept", "text/event-stream"),
        ],
        Some(r#"{"to":"h2"}"#),
    );
    assert_eq!(r.status, 200);
    let text = r.text().replace("\r\n", "\n");
    for step in ["check", "prepare", "migrate", "finish"] {
        assert!(text.contains(&format!("\"step\":\"{step}\"")), "no {step} step: {text}");
    }
    let done = text.split("event: done\n").nth(1).unwrap_or_else(|| panic!("no done event: {text}"));
    let m: Value = serde_json::from_str(done.lines().next().unwrap().strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!((m["mode"].as_str(), m["to"].as_str()), (Some("offline"), Some(H2)), "{m}");
    assert!(!text.contains(&h2.uri), "the events name the host, not its URI: {text}");
    // It is there, not here, and the list says so at once.
    assert_eq!(h2.state(&vm.0), "shut off");
    assert!(!vm.exists(), "it is still here");
    let list = s.get("/api/v1/vms").json();
    assert!(row(&list, "local", &vm.0).is_none(), "{list}");
    assert_eq!(row(&list, H2, &vm.0).unwrap_or_else(|| panic!("{list}"))["state"], "shut off");
    let log = server.log_text();
    assert!(log.contains(&format!("admin: migrate {} to host h2", vm.0)), "{log}");
    drop(server);
    let _ = std::fs::remove_dir_all(hosts_dir);
}
