//! The web UI in a real browser: starts `phyllome serve` on the real
//! libvirtd and runs tests/browser/console.test.mjs (playwright-core driving
//! Debian's headless Chromium). Screenshots of each page go to
//! target/artifacts/web-ui/. The test VMs are removed however the run ends.

mod web_common;
use std::path::{Path, PathBuf};
use web_common::*;

fn artifacts() -> PathBuf {
    // CARGO_TARGET_TMPDIR is TARGET/tmp.
    Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap().join("artifacts/web-ui")
}

#[test]
fn web_ui_in_chromium_login_create_console_stop_delete() {
    require_guest();
    browser_dir();
    let server = Server::start(&[]);
    let vm = TestVm::new("web-ui");
    // The clone the UI makes of it (the page deletes it; this guard, when the run ends early).
    let clone_vm = TestVm(format!("{}-clone", vm.0));
    clone_vm.clean();
    // The name the import dialog's dry run is given (nothing is made; this guard, if something were).
    let import_vm = TestVm(format!("{}-imp", vm.0));
    import_vm.clean();
    // Made from an ISO uploaded through the UI.
    let iso_vm = TestVm::new("web-ui-iso");
    let xss = TestVm(format!(
        "{PREFIX}<img src=x onerror=window.__phyllome_xss=1><svg onload=alert(2)>&'\"-{}",
        std::process::id()
    ));
    xss.clean();
    define_foreign_domain(&xss);
    let out_dir = artifacts();
    let _ = std::fs::remove_dir_all(&out_dir);
    let config = serde_json::json!({
        "url": server.url, "user": USER, "password": PASSWORD, "vm": vm.0, "isoVm": iso_vm.0, "xssName": xss.0,
        "artifacts": out_dir, "serialLog": format!("/var/log/libvirt/qemu/{}-serial.log", vm.0),
    });
    run_browser(&server, "console.test.mjs", &config);
    for page in [
        "01-login",
        "02-vm-list",
        "03-create-dialog",
        "05-host-check",
        "06-devices",
        "07-console",
        "08-vm-detail",
        "09-serial",
        "10-create-progress",
        "12-console-not-running",
        "13-usage-charts",
        "15-media-upload",
        "16-iso-vm-console",
        "17-create-from-iso",
        "18-shares",
        "19-snapshots",
        "20-snapshot-revert",
        "21-clone",
        "22-manifest",
        "23-vm-list-autostart",
        "24-export",
        "25-export-started",
        "26-import-dry-run",
    ] {
        assert!(out_dir.join(format!("{page}.png")).is_file(), "no screenshot of {page}");
    }
    assert!(!vm.exists(), "the UI's delete left the VM");
    assert!(!clone_vm.exists(), "the UI's delete left the clone");
    assert!(!import_vm.exists(), "the import dialog's dry run made a VM");
    assert!(!iso_vm.exists(), "the UI's delete left the VM made from the uploaded ISO");
    let left: Vec<String> = std::fs::read_dir(GUEST)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("phyllome-test-media"))
        .collect();
    assert!(left.is_empty(), "the uploaded ISO was left in the ISO folder: {left:?}");
    let shares_left: Vec<String> = std::fs::read_dir("/var/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("phyllome-test-share-"))
        .collect();
    assert!(shares_left.is_empty(), "the shares step left its folder: {shares_left:?}");
    assert!(!server.log_text().contains(PASSWORD));
}

#[test]
fn web_ui_create_offers_secure_boot_and_the_console_points_to_serial() {
    require_guest();
    browser_dir();
    let server = Server::start(&[]);
    // Made through the UI with Secure Boot switched on (not started).
    let secure = TestVm::new("web-sb");
    // A guest whose kernel writes only to its serial port: a black screen.
    let serial = TestVm::new("web-serial");
    let out = phyllome()
        .args(["create", &serial.0, "--os", "linux", "--memory", "512M", "--disk-size", "4G", "--network", "none"])
        .args(["--kernel", &format!("{GUEST}/vmlinuz"), "--initrd", &format!("{GUEST}/initrd.img")])
        .args(["--cmdline", "console=ttyS0 panic=-1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out_dir = artifacts().join("create-console");
    let _ = std::fs::remove_dir_all(&out_dir);
    let config = serde_json::json!({
        "url": server.url, "user": USER, "password": PASSWORD, "artifacts": out_dir,
        "secureBootVm": secure.0, "serialVm": serial.0,
    });
    run_browser(&server, "create-console.test.mjs", &config);
    // What the switch asked for is what libvirt has: secure-boot firmware with Microsoft keys.
    let xml = virsh_ok(&["dumpxml", "--inactive", &secure.0]);
    assert!(xml.contains("<feature enabled='yes' name='secure-boot'/>"), "{xml}");
    assert!(xml.contains("<feature enabled='yes' name='enrolled-keys'/>"), "{xml}");
}
