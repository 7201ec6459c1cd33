//! scripts/package.sh builds the RPM and the Debian package; both carry the
//! binary, the systemd unit, bash/zsh/fish completions and the man pages.
//!
//! Needs rpmbuild (Debian: rpm) and cargo-deb, which scripts/setup.sh installs.
//! The test packages its own debug build (PHYLLOME_BIN), so CI builds no
//! release binary for it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn listing(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}: run scripts/setup.sh"));
    assert!(out.status.success(), "{cmd} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn find(dir: &Path, ext: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == ext))
        .unwrap_or_else(|| panic!("no .{ext} in {}", dir.display()))
}

#[test]
fn package_script_builds_rpm_and_deb_with_binary_unit_completions_and_man_pages() {
    let out = Command::new(repo().join("scripts/package.sh"))
        .env("PHYLLOME_BIN", env!("CARGO_BIN_EXE_phyllome"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "scripts/package.sh failed:\n{stderr}");
    let dir = repo().join("target/packages");
    let (deb, rpm) = (find(&dir, "deb"), find(&dir, "rpm"));
    let version = env!("CARGO_PKG_VERSION");
    assert!(deb.file_name().unwrap().to_string_lossy().starts_with(&format!("phyllome_{version}-1_amd64")));
    assert!(rpm.file_name().unwrap().to_string_lossy().starts_with(&format!("phyllome-{version}-1.")));

    let deb_files = listing("dpkg-deb", &["-c", deb.to_str().unwrap()]);
    for want in [
        "./usr/bin/phyllome",
        "lib/systemd/system/phyllome.service",
        "./usr/share/bash-completion/completions/phyllome",
        "./usr/share/zsh/vendor-completions/_phyllome",
        "./usr/share/fish/vendor_completions.d/phyllome.fish",
        "./usr/share/man/man1/phyllome.1.gz",
        "./usr/share/man/man1/phyllome-host-setup.1.gz",
        "./usr/share/man/man1/phyllome-image-kickstart.1.gz",
        "./usr/share/phyllome/vendor/htm/preact/standalone.module.js",
        "./usr/share/phyllome/vendor/@xterm/xterm/lib/xterm.mjs",
        "./usr/share/phyllome/novnc/core/rfb.js",
    ] {
        // dpkg-deb -c prints "./path" or "path" depending on the builder.
        let bare = want.trim_start_matches("./");
        assert!(
            deb_files.lines().any(|l| l.ends_with(&format!("/{bare}")) || l.ends_with(&format!(" {bare}"))),
            "{want} not in the .deb:\n{deb_files}"
        );
    }
    assert!(deb_files.lines().any(|l| l.starts_with("-rwxr-xr-x") && l.ends_with("usr/bin/phyllome")));
    let control = listing("dpkg-deb", &["-f", deb.to_str().unwrap(), "Depends"]);
    assert!(control.contains("libvirt0") && control.contains("qemu-system-x86"), "{control}");
    // Shipped disabled: the maintainer scripts never enable it on a fresh install.
    let postinst = listing("dpkg-deb", &["--info", deb.to_str().unwrap(), "postinst"]);
    assert!(postinst.contains("was-enabled phyllome.service"), "{postinst}");
    assert!(
        !postinst.contains("deb-systemd-invoke start")
            && !postinst.contains("restart phyllome.service >/dev/null || true\n\tfi\nfi\n# End"),
        "{postinst}"
    );

    let rpm_files = listing("rpm", &["-qlp", rpm.to_str().unwrap()]);
    for want in [
        "/usr/bin/phyllome",
        "/usr/lib/systemd/system/phyllome.service",
        "/usr/share/bash-completion/completions/phyllome",
        "/usr/share/zsh/site-functions/_phyllome",
        "/usr/share/fish/vendor_completions.d/phyllome.fish",
        "/usr/share/man/man1/phyllome.1.gz",
        "/usr/share/man/man1/phyllome-host-setup.1.gz",
        "/usr/share/phyllome/vendor/htm/preact/standalone.module.js",
        "/usr/share/phyllome/novnc/core/rfb.js",
    ] {
        assert!(rpm_files.lines().any(|l| l == want), "{want} not in the RPM:\n{rpm_files}");
    }
    let requires = listing("rpm", &["-qp", "--requires", rpm.to_str().unwrap()]);
    assert!(requires.contains("libvirt-daemon-kvm") && requires.contains("edk2-ovmf"), "{requires}");

    // The staged unit is the repository's, and the completions are real scripts.
    let stage = dir.join("stage");
    assert_eq!(
        std::fs::read_to_string(stage.join("usr/lib/systemd/system/phyllome.service")).unwrap(),
        std::fs::read_to_string(repo().join("packaging/phyllome.service")).unwrap()
    );
    let bash = std::fs::read_to_string(stage.join("usr/share/bash-completion/completions/phyllome")).unwrap();
    assert!(bash.contains("complete -F _phyllome") && bash.contains("setup"), "bash completion");
    let fish = std::fs::read_to_string(stage.join("usr/share/fish/vendor_completions.d/phyllome.fish")).unwrap();
    assert!(fish.contains("complete -c phyllome"));
    let zsh = std::fs::read_to_string(stage.join("usr/share/zsh/site-functions/_phyllome")).unwrap();
    assert!(zsh.starts_with("#compdef phyllome"));
}

#[test]
fn the_unit_runs_phyllome_serve_and_is_not_enabled_by_itself() {
    let unit = std::fs::read_to_string(repo().join("packaging/phyllome.service")).unwrap();
    assert!(unit.contains("\nExecStart=/usr/bin/phyllome serve\n"));
    assert!(unit.contains("\nEnvironment=PHYLLOME_LISTEN=127.0.0.1:"), "loopback unless configured");
    assert!(unit.contains("\nEnvironmentFile=-/etc/phyllome/phyllome.env\n"));
    assert!(unit.contains("\n[Install]\nWantedBy=multi-user.target\n"));
    let port = phyllome_system::WEB_PORT.to_string();
    assert!(unit.contains(&format!("127.0.0.1:{port}")), "the unit's default port is phyllome_system::WEB_PORT");
}
