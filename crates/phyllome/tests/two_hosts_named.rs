//! Named hosts: `phyllome host add|list|remove`, `--host NAME` and `list --all-hosts`, against
//! this machine's libvirtd and a second, real libvirtd (scripts/second-host.sh). Each test keeps
//! its own hosts file (`PHYLLOME_TEST_HOSTS_FILE`), removed on drop.

mod common;
use common::*;
use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A test's own hosts list, and phyllome run with it.
struct HostsFile {
    dir: PathBuf,
}

impl HostsFile {
    fn new(suffix: &str) -> HostsFile {
        let dir = std::env::temp_dir().join(format!("{PREFIX}hosts-{suffix}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        HostsFile { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.join("hosts.toml")
    }

    fn run_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_phyllome"))
            .env("PHYLLOME_CONNECT", URI)
            .env("PHYLLOME_TEST_HOSTS_FILE", self.path())
            .env_remove("PHYLLOME_HOST")
            .envs(env.iter().copied())
            .args(args)
            .output()
            .unwrap()
    }

    fn run(&self, args: &[&str]) -> Output {
        self.run_env(args, &[])
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&ok(self.run(args))).unwrap()
    }
}

impl Drop for HostsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A URI whose socket nobody listens on.
fn dead_uri(tag: &str) -> String {
    format!("qemu+unix:///system?socket=/nonexistent/{PREFIX}{tag}-{}/libvirt-sock", std::process::id())
}

fn names(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|h| h["name"].as_str().unwrap().to_string()).collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn add_remove_and_their_refusals() {
    require_libvirt();
    let hf = HostsFile::new("refusals");
    let dead = dead_uri("refusals");

    // Bad names and URIs: invalid input, nothing connected to or stored.
    for (name, uri) in [("Bad_Name", dead.as_str()), ("local", dead.as_str()), ("h", "xen:///system"), ("h", "server")]
    {
        let (code, kind, msg) = refused(hf.run(&["host", "add", name, uri, "--json"]));
        assert_eq!((code, kind.as_str()), (3, "invalid-input"), "{name} {uri}: {msg}");
    }
    // An unreachable URI is refused (unavailable), and nothing is stored.
    let (code, kind, msg) = refused(hf.run(&["host", "add", "gone", &dead, "--json"]));
    assert_eq!((code, kind.as_str()), (7, "unavailable"), "{msg}");
    assert!(msg.contains("gone") && msg.contains("cannot be reached"), "{msg}");
    assert!(!hf.path().exists(), "a refused add stores nothing");
    let out = hf.run(&["host", "add", "gone", &dead]);
    assert_eq!(out.status.code(), Some(7));
    assert!(stderr(&out).starts_with("phyllome: error: host \"gone\""), "{}", stderr(&out));
    assert_eq!(names(&hf.json(&["host", "list", "--offline", "--json"])), ["local"]);

    // --no-check stores it without connecting.
    let added = hf.json(&["host", "add", "gone", &dead, "--no-check", "--json"]);
    assert_eq!(added["name"], "gone");
    assert_eq!(added["uri"], dead.as_str());
    assert_eq!(added["checked"], false);
    assert!(added["libvirt"].is_null());
    let text = ok(hf.run(&["host", "list", "--offline"]));
    assert!(text.starts_with("NAME"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("gone") && l.ends_with(&dead)), "{text}");
    assert!(text.lines().any(|l| l.starts_with("local") && l.ends_with(URI)), "{text}");

    // Duplicates: the name, or the URI under another name.
    let (code, kind, msg) = refused(hf.run(&["host", "add", "gone", &dead_uri("other"), "--no-check", "--json"]));
    assert_eq!((code, kind.as_str()), (5, "conflict"), "{msg}");
    let (code, kind, msg) = refused(hf.run(&["host", "add", "again", &dead, "--no-check", "--json"]));
    assert_eq!((code, kind.as_str()), (5, "conflict"), "{msg}");

    // The list connects to each host: the dead one is reported, not fatal, and does not hang.
    let t = Instant::now();
    let out = hf.run(&["host", "list", "--json"]);
    assert!(t.elapsed() < Duration::from_secs(10), "host list took {:?}", t.elapsed());
    let list: Value = serde_json::from_str(&ok(out)).unwrap();
    assert_eq!(names(&list), ["local", "gone"]);
    assert_eq!(list[0]["reached"], true);
    assert!(!list[0]["libvirt"].as_str().unwrap().is_empty() && !list[0]["qemu"].as_str().unwrap().is_empty());
    assert_eq!(list[1]["reached"], false);
    assert!(list[1]["error"].as_str().unwrap().contains("cannot be reached"), "{list}");
    let out = hf.run(&["host", "list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.lines().any(|l| l.starts_with("gone") && l.contains("unreachable")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("local") && l.contains("reached")), "{text}");
    assert!(stderr(&out).contains("warning: host \"gone\""), "{}", stderr(&out));

    // migrate --to takes a host's name: an unknown one is not found, a dead one unreachable.
    let (code, kind, msg) =
        refused(hf.run(&["migrate", "any", "--to", "nope", "--copy-storage", "--dry-run", "--json"]));
    assert_eq!((code, kind.as_str()), (4, "not-found"), "{msg}");
    let (code, kind, msg) =
        refused(hf.run(&["migrate", "any", "--to", "gone", "--live", "--copy-storage", "--dry-run", "--json"]));
    assert_eq!((code, kind.as_str()), (7, "unavailable"), "{msg}");
    assert!(msg.contains(&dead), "{msg}");

    // --host: unknown names are not found (naming host list); --host with --connect is a usage error.
    let (code, kind, msg) = refused(hf.run(&["--host", "nope", "list", "--json"]));
    assert_eq!((code, kind.as_str()), (4, "not-found"), "{msg}");
    assert!(msg.contains("phyllome host list"), "{msg}");
    let (code, kind, msg) = refused(hf.run(&["--host", "gone", "--connect", URI, "list", "--json"]));
    assert_eq!((code, kind.as_str()), (2, "usage"), "{msg}");
    let out = hf.run(&["list", "--host", "gone", "--connect", URI]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--host") && stderr(&out).contains("--connect"), "{}", stderr(&out));
    let (code, kind, msg) = refused(hf.run(&["--host", "gone", "list", "--all-hosts", "--json"]));
    assert_eq!((code, kind.as_str()), (2, "usage"), "{msg}");
    // A host that does not answer: unavailable, as for --connect.
    let (code, kind, msg) = refused(hf.run(&["--host", "gone", "list", "--json"]));
    assert_eq!((code, kind.as_str()), (7, "unavailable"), "{msg}");
    // `local` is --connect's URI.
    let local: Value = serde_json::from_str(&ok(hf.run(&["--host", "local", "list", "--json"]))).unwrap();
    assert!(local.is_array());

    // Remove: unknown names are not found; a removed host is gone from the list.
    let (code, kind, msg) = refused(hf.run(&["host", "remove", "nope", "--json"]));
    assert_eq!((code, kind.as_str()), (4, "not-found"), "{msg}");
    assert!(msg.contains("phyllome host list"), "{msg}");
    let removed = hf.json(&["host", "remove", "gone", "--json"]);
    assert_eq!((removed["name"].as_str(), removed["uri"].as_str()), (Some("gone"), Some(dead.as_str())));
    assert_eq!(names(&hf.json(&["host", "list", "--offline", "--json"])), ["local"]);
    let text = ok(hf.run(&["host", "add", "gone", &dead, "--no-check"]));
    assert!(text.contains("--no-check"), "{text}");
    let text = ok(hf.run(&["host", "remove", "gone"]));
    assert!(text.starts_with("removed host gone"), "{text}");
}

/// Defines a minimal stopped TCG domain (no disk, never started) on the second host.
fn define_there(host: &SecondHost, name: &str) {
    let xml = format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='q35'>hvm</type></os><devices/></domain>"
    );
    let file = std::env::temp_dir().join(format!("{name}.xml"));
    std::fs::write(&file, xml).unwrap();
    let out = host.virsh(&["define", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(out.status.success(), "define {name} there: {}", stderr(&out));
}

fn vm_hosts(all: &Value, vm: &str) -> Vec<String> {
    all["vms"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"] == vm)
        .map(|v| v["host"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_second_host_by_name_and_every_hosts_vms() {
    require_libvirt();
    let hf = HostsFile::new("second");
    let here = format!("{PREFIX}hosts-here-{}", std::process::id());
    let there = format!("{PREFIX}hosts-there-{}", std::process::id());
    let _here = define_minimal_domain(&here);
    let host = SecondHost::start("hosts", &[]);
    define_there(&host, &there); // removed with the host

    // Added after a check that it answers, with its versions.
    let text = ok(hf.run(&["host", "add", "h2", &host.uri]));
    assert!(text.starts_with("added host h2: ") && text.contains("libvirt ") && text.contains("QEMU "), "{text}");
    let list = hf.json(&["host", "list", "--json"]);
    assert_eq!(names(&list), ["local", "h2"]);
    assert_eq!(list[1]["uri"], host.uri.as_str());
    assert_eq!(list[1]["reached"], true, "{list}");
    assert!(!list[1]["qemu"].as_str().unwrap().is_empty());
    let text = ok(hf.run(&["host", "list"]));
    assert!(text.lines().any(|l| l.starts_with("h2") && l.contains("reached") && l.ends_with(&host.uri)), "{text}");

    // --host NAME (or PHYLLOME_HOST) works on that host's libvirt.
    let there_list = hf.json(&["--host", "h2", "list", "--json"]);
    let listed: Vec<_> = there_list.as_array().unwrap().iter().map(|v| v["name"].as_str().unwrap()).collect();
    assert_eq!(listed, [there.as_str()], "only the second host's VM");
    let out = ok(hf.run_env(&["list"], &[("PHYLLOME_HOST", "h2")]));
    assert!(out.contains(&there) && !out.contains(&here), "{out}");
    // --connect on the command line beats PHYLLOME_HOST from the environment.
    let out = ok(hf.run_env(&["--connect", URI, "list"], &[("PHYLLOME_HOST", "h2")]));
    assert!(out.contains(&here) && !out.contains(&there), "{out}");

    // Every host's VMs, with their host.
    let all = hf.json(&["list", "--all-hosts", "--json"]);
    assert_eq!(vm_hosts(&all, &here), ["local"], "{all}");
    assert_eq!(vm_hosts(&all, &there), ["h2"], "{all}");
    assert_eq!(all["unreachable"], serde_json::json!([]));
    assert_eq!(names(&all["hosts"]), ["local", "h2"]);
    assert_eq!(all["hosts"][1]["vms"], 1);
    let row = all["vms"].as_array().unwrap().iter().find(|v| v["name"] == there.as_str()).unwrap();
    assert_eq!(row["state"], "shut off");
    assert_eq!(row["vcpus"], 1);
    let text = ok(hf.run(&["list", "--all-hosts"]));
    assert!(text.starts_with("HOST"), "{text}");
    assert!(text.lines().any(|l| l.starts_with("h2 ") && l.contains(&there)), "{text}");
    assert!(text.lines().any(|l| l.starts_with("local ") && l.contains(&here)), "{text}");

    // The second host goes away: the local VMs are still listed, the host is reported unreachable.
    drop(host);
    let t = Instant::now();
    let out = hf.run(&["list", "--all-hosts", "--json"]);
    assert!(t.elapsed() < Duration::from_secs(10), "list --all-hosts took {:?}", t.elapsed());
    assert!(stderr(&out).contains("\"h2\"") && stderr(&out).contains("cannot be reached"), "{}", stderr(&out));
    let all: Value = serde_json::from_str(&ok(out)).unwrap();
    assert_eq!(vm_hosts(&all, &here), ["local"], "{all}");
    assert!(vm_hosts(&all, &there).is_empty());
    assert_eq!(all["unreachable"], serde_json::json!(["h2"]));
    assert_eq!(all["hosts"][1]["reached"], false);
    let out = hf.run(&["list", "--all-hosts"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&here));
    assert!(stderr(&out).contains("warning: host \"h2\""), "{}", stderr(&out));
    let list = hf.json(&["host", "list", "--json"]);
    assert_eq!(list[1]["reached"], false, "{list}");
}
