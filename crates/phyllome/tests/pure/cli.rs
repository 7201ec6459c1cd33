//! The `phyllome` binary's catalog and xml commands, as a user runs them.

use crate::common::phyllome;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn os_list_json_names_every_profile() {
    let out = phyllome(&["os", "list", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = v.as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    assert_eq!(ids, phyllome_engine::model::catalog::ids());
    assert!(v[0]["description"].as_str().unwrap().len() > 20);
}

#[test]
fn os_show_explains_every_device() {
    let out = phyllome(&["os", "show", "windows11", "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let devices = v["devices"].as_array().unwrap();
    for item in ["firmware", "tpm", "hyperv", "clock", "disk", "network", "video", "balloon"] {
        let d = devices.iter().find(|d| d["item"] == item).unwrap_or_else(|| panic!("{item} missing"));
        assert!(d["why"].as_str().unwrap().len() > 10, "{item} has no reason");
    }
    let text = phyllome(&["os", "show", "linux"]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("why: virtio-rng"));
}

#[test]
fn unknown_os_fails_with_the_known_ids() {
    for args in [&["os", "show", "plan9"][..], &["xml", "--os", "plan9", "--name", "x"][..]] {
        let out = phyllome(args);
        assert_eq!(out.status.code(), Some(3), "invalid input");
        let e = stderr(&out);
        assert!(e.contains("unknown OS id \"plan9\"") && e.contains("windows11"), "{e}");
    }
}

#[test]
fn an_os_or_an_iso_is_needed_and_vm_excludes_name() {
    for args in [&["xml", "--name", "x"][..], &["create", "x"][..]] {
        let out = phyllome(args);
        assert_eq!(out.status.code(), Some(2), "usage: {}", stderr(&out));
        assert!(stderr(&out).contains("--os <OS>"), "{}", stderr(&out));
    }
    let out = phyllome(&["xml", "--name", "x", "--json"]);
    let e: serde_json::Value = serde_json::from_str(stderr(&out).trim()).unwrap();
    assert_eq!(e["kind"], "usage", "{e}");
    let out = phyllome(&["xml", "--vm", "a", "--name", "b"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn bad_names_and_missing_files_are_refused_before_anything_runs() {
    let long = "x".repeat(200);
    for (name, want) in [("a<b>&c", "contains '<'"), ("a/b", "contains '/'"), (long.as_str(), "200 characters")] {
        let out = phyllome(&["xml", "--os", "linux", "--name", name]);
        assert_eq!(out.status.code(), Some(3), "invalid input");
        assert!(stderr(&out).contains(want), "{name}: {}", stderr(&out));
        assert!(out.stdout.is_empty());
    }
    let out = phyllome(&["xml", "--os", "linux", "--name", "ok", "--iso", "/nonexistent/dir/x.iso"]);
    assert_eq!(out.status.code(), Some(4), "not found");
    assert!(stderr(&out).contains("ISO \"/nonexistent/dir/x.iso\" does not exist"), "{}", stderr(&out));
}
