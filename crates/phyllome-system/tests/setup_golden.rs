//! `phyllome host setup` on fixture roots, compared to golden files.
//!
//! Inputs: `fixtures/setup-roots/NAME/` (a Fedora-like host with grubby, a
//! Debian-like one with /etc/default/grub). Expected: the plan shown to the
//! user (`fixtures/golden/setup/NAME/plan.txt`) and the whole tree after the
//! setup (`fixtures/golden/setup/NAME/tree/`). Regenerate on purpose with
//! `PHYLLOME_REGENERATE_GOLDEN=1 cargo test -p phyllome-system --test setup_golden`.

use phyllome_system::apply::{apply, Executor, Outcome};
use phyllome_system::setup::{plan, Action, Options, Plan, PoolState, POOL_MODE};
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const POOL_PATH: &str = "/var/lib/libvirt/images/phyllome";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn regenerate() -> bool {
    std::env::var_os("PHYLLOME_REGENERATE_GOLDEN").is_some()
}

fn fixture_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo().join("fixtures/setup-roots"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        static COUNT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let p = std::env::temp_dir().join(format!("phyllome-setup-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), &dest).unwrap();
        }
    }
}

/// Every regular file under `dir` (relative path → content) and every directory.
fn read_tree(dir: &Path) -> (BTreeMap<String, String>, Vec<String>) {
    fn walk(base: &Path, dir: &Path, files: &mut BTreeMap<String, String>, dirs: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(base).unwrap().to_string_lossy().to_string();
            if e.file_type().unwrap().is_dir() {
                dirs.push(rel);
                walk(base, &e.path(), files, dirs);
            } else {
                files.insert(rel, std::fs::read_to_string(e.path()).unwrap());
            }
        }
    }
    let (mut files, mut dirs) = (BTreeMap::new(), Vec::new());
    walk(dir, dir, &mut files, &mut dirs);
    dirs.sort();
    (files, dirs)
}

fn options(root: &Path) -> Options {
    Options {
        root: root.to_path_buf(),
        live: false,
        pool_name: "phyllome".into(),
        pool_path: POOL_PATH.into(),
        pool_state: PoolState::Unknown("not asked on a --root tree".into()),
    }
}

/// Fails the test if anything would be executed: on a --root tree nothing is.
struct NothingRuns;

impl Executor for NothingRuns {
    fn run(&mut self, argv: &[String]) -> Result<(), String> {
        panic!("ran {argv:?} on a --root tree")
    }
    fn define_pool(&mut self, name: &str, _: &str) -> Result<bool, String> {
        panic!("defined pool {name} on a --root tree")
    }
}

fn setup(root: &Path) -> (Plan, Vec<Outcome>) {
    let p = plan(&options(root)).unwrap();
    let outcomes = apply(root, false, &p, &mut NothingRuns).unwrap();
    (p, outcomes)
}

#[test]
fn golden_plans_and_trees_for_every_fixture_root() {
    let names = fixture_names();
    assert!(names.contains(&"fedora-grubby".to_string()) && names.contains(&"debian-grub".to_string()), "{names:?}");
    let mut mismatches = Vec::new();
    for name in &names {
        let scratch = Scratch::new(name);
        let root = scratch.0.join("root");
        copy_tree(&repo().join("fixtures/setup-roots").join(name), &root);
        let (p, _) = setup(&root);
        let rendered = p.render();
        let golden = repo().join("fixtures/golden/setup").join(name);
        let (files, dirs) = read_tree(&root);
        let dir_list = dirs.join("\n") + "\n";
        if regenerate() {
            let _ = std::fs::remove_dir_all(&golden);
            std::fs::create_dir_all(golden.join("tree")).unwrap();
            std::fs::write(golden.join("plan.txt"), &rendered).unwrap();
            std::fs::write(golden.join("directories.txt"), &dir_list).unwrap();
            for (rel, content) in &files {
                let dest = golden.join("tree").join(rel);
                std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
                std::fs::write(dest, content).unwrap();
            }
            continue;
        }
        let expect = |mismatches: &mut Vec<String>, what: String, want: Option<String>, got: &str| match want {
            Some(w) if w == got => {}
            Some(w) => mismatches.push(format!("{what} differs:\n--- expected\n{w}\n+++ got\n{got}")),
            None => mismatches.push(format!("{what} is missing (got:\n{got})")),
        };
        expect(
            &mut mismatches,
            format!("{name}/plan.txt"),
            std::fs::read_to_string(golden.join("plan.txt")).ok(),
            &rendered,
        );
        expect(
            &mut mismatches,
            format!("{name}/directories.txt"),
            std::fs::read_to_string(golden.join("directories.txt")).ok(),
            &dir_list,
        );
        let (want_files, _) = read_tree(&golden.join("tree"));
        let want_names: Vec<&String> = want_files.keys().collect();
        let got_names: Vec<&String> = files.keys().collect();
        if want_names != got_names {
            mismatches.push(format!("{name}: files after setup {got_names:?}, expected {want_names:?}"));
        }
        for (rel, content) in &files {
            expect(&mut mismatches, format!("{name}/tree/{rel}"), want_files.get(rel).cloned(), content);
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} golden mismatches (PHYLLOME_REGENERATE_GOLDEN=1 to accept):\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn first_run_changes_the_expected_files_and_a_second_run_changes_nothing() {
    for name in fixture_names() {
        let scratch = Scratch::new(&format!("twice-{name}"));
        let root = scratch.0.join("root");
        copy_tree(&repo().join("fixtures/setup-roots").join(&name), &root);
        let (before, _) = read_tree(&root);
        let (first, outcomes) = setup(&root);
        assert!(first.changes.len() >= 4, "{name}: {}", first.render());
        for (c, o) in first.changes.iter().zip(&outcomes) {
            let want = if matches!(c.action, Action::Run { .. }) { Outcome::Recorded } else { Outcome::Done };
            assert_eq!(*o, want, "{name}: {}", c.summary());
        }
        let (after, _) = read_tree(&root);
        let changed: Vec<&String> = after.keys().filter(|k| before.get(*k) != after.get(*k)).collect();
        for f in ["etc/modules-load.d/phyllome-vfio.conf", "etc/modprobe.d/phyllome-kvm.conf", "etc/libvirt/qemu.conf"]
        {
            assert!(changed.iter().any(|c| *c == f), "{name}: {f} not written ({changed:?})");
        }
        assert!(changed.iter().any(|c| c.contains("grub")), "{name}: kernel parameters not set ({changed:?})");
        let pool = root.join(POOL_PATH.trim_start_matches('/'));
        assert_eq!(std::fs::metadata(&pool).unwrap().permissions().mode() & 0o7777, POOL_MODE, "{name}");

        let second = plan(&options(&root)).unwrap();
        assert!(second.changes.is_empty(), "{name}: second run plans changes:\n{}", second.render());
        assert!(second.render().contains("no changes: this host is set up"));
        apply(&root, false, &second, &mut NothingRuns).unwrap();
        assert_eq!(read_tree(&root).0, after, "{name}: the second run wrote something");
    }
}

#[test]
fn settings_phyllome_does_not_own_survive() {
    let scratch = Scratch::new("preserve");
    let deb = scratch.0.join("debian");
    copy_tree(&repo().join("fixtures/setup-roots/debian-grub"), &deb);
    setup(&deb);
    let read = |rel: &str| std::fs::read_to_string(deb.join(rel)).unwrap();
    let grub = read("etc/default/grub");
    assert!(grub.contains("GRUB_CMDLINE_LINUX=\"console=tty0 console=ttyS0,115200n8 iommu=pt\"\n"), "{grub}");
    assert!(grub.contains("GRUB_CMDLINE_LINUX_DEFAULT=\"quiet\"\n"));
    assert!(!grub.contains("intel_iommu"), "AMD host got Intel's parameter");
    let qemu = read("etc/libvirt/qemu.conf");
    assert!(qemu.contains("\nsecurity_driver = \"apparmor\"\n") && qemu.contains("\nuser = \"libvirt-qemu\"\n"));
    assert!(qemu.contains("\nvnc_listen = \"127.0.0.1\"\n") && !qemu.contains("\nvnc_listen = \"0.0.0.0\""));
    assert!(qemu.contains("#vnc_listen = \"0.0.0.0\"\n"), "comments are kept");
    assert_eq!(qemu.matches("spice_listen = \"127.0.0.1\"").count(), 1);
    assert!(read("etc/modprobe.d/local-kvm.conf").contains("options kvm ignore_msrs=1 report_ignored_msrs=0"));
    assert!(read("etc/modprobe.d/phyllome-kvm.conf").contains("options kvm_amd nested=1"));
    assert_eq!(
        read("etc/default/grub.d/serial.cfg"),
        std::fs::read_to_string(repo().join("fixtures/setup-roots/debian-grub/etc/default/grub.d/serial.cfg")).unwrap()
    );

    let fed = scratch.0.join("fedora");
    copy_tree(&repo().join("fixtures/setup-roots/fedora-grubby"), &fed);
    setup(&fed);
    let read = |rel: &str| std::fs::read_to_string(fed.join(rel)).unwrap();
    let entry = read("boot/loader/entries/4c2f0a7e5b1d4e0c9a3f6b8d2e1c7a90-6.17.7-300.fc44.x86_64.conf");
    assert!(entry.contains(
        "options root=/dev/mapper/fedora-root ro rd.lvm.lv=fedora/root rhgb quiet intel_iommu=on iommu=pt\n"
    ));
    assert!(read("etc/kernel/cmdline").ends_with("rhgb quiet intel_iommu=on iommu=pt\n"));
    assert!(read("etc/default/grub")
        .contains("GRUB_CMDLINE_LINUX=\"rd.lvm.lv=fedora/root rhgb quiet intel_iommu=on iommu=pt\"\n"));
    assert!(read("etc/libvirt/qemu.conf").contains("\nmax_core = \"unlimited\"\n"));
    assert!(read("etc/modprobe.d/phyllome-kvm.conf").contains("options kvm_intel nested=1"));
}

#[test]
fn dry_run_writes_nothing() {
    for name in fixture_names() {
        let scratch = Scratch::new(&format!("dry-{name}"));
        let root = scratch.0.join("root");
        copy_tree(&repo().join("fixtures/setup-roots").join(&name), &root);
        let before = read_tree(&root);
        let p = plan(&options(&root)).unwrap();
        assert!(!p.changes.is_empty());
        assert_eq!(read_tree(&root), before, "{name}: planning wrote something");
    }
}

/// A host where the user chose otherwise: their values stay, and the notes say so.
#[test]
fn conflicting_user_choices_are_kept_and_reported() {
    let scratch = Scratch::new("conflicts");
    let root = scratch.0.join("root");
    copy_tree(&repo().join("fixtures/setup-roots/fedora-grubby"), &root);
    let entries = root.join("boot/loader/entries");
    for e in std::fs::read_dir(&entries).unwrap() {
        let p = e.unwrap().path();
        let t = std::fs::read_to_string(&p).unwrap().replace("rhgb quiet", "rhgb quiet intel_iommu=off");
        std::fs::write(&p, t).unwrap();
    }
    std::fs::write(root.join("etc/modprobe.d/kvm.conf"), "options kvm_intel nested=0\n").unwrap();
    std::fs::write(root.join("etc/libvirt/qemu.conf"), "spice_listen = \"127.0.0.1\" # mine\n").unwrap();
    let (p, _) = setup(&root);
    let text = p.render();
    assert!(
        text.contains("kernel parameter intel_iommu=on not added: you set intel_iommu=off in /boot/loader/entries/"),
        "{text}"
    );
    assert!(text.contains("--args=iommu=pt"), "{text}");
    assert!(
        text.contains("nested virtualization: /etc/modprobe.d/kvm.conf sets kvm_intel nested=0; not changed"),
        "{text}"
    );
    assert!(!root.join("etc/modprobe.d/phyllome-kvm.conf").exists());
    let qemu = std::fs::read_to_string(root.join("etc/libvirt/qemu.conf")).unwrap();
    assert!(
        qemu.starts_with("spice_listen = \"127.0.0.1\" # mine\n") && qemu.contains("vnc_listen = \"127.0.0.1\""),
        "{qemu}"
    );
    let entry = std::fs::read_to_string(entries.join("4c2f0a7e5b1d4e0c9a3f6b8d2e1c7a90-0-rescue.conf")).unwrap();
    assert!(entry.contains("intel_iommu=off iommu=pt\n") && !entry.contains("intel_iommu=on"), "{entry}");
    assert!(plan(&options(&root)).unwrap().changes.is_empty());
}

#[test]
fn pool_directory_mode_is_fixed_and_live_hosts_define_the_pool() {
    let scratch = Scratch::new("pool");
    let root = scratch.0.join("root");
    copy_tree(&repo().join("fixtures/setup-roots/debian-grub"), &root);
    let pool = root.join(POOL_PATH.trim_start_matches('/'));
    std::fs::create_dir_all(&pool).unwrap();
    std::fs::set_permissions(&pool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let p = plan(&options(&root)).unwrap();
    assert!(p.render().contains(&format!("set {POOL_PATH} to mode 0711 (was 0755")), "{}", p.render());
    apply(&root, false, &p, &mut NothingRuns).unwrap();
    assert_eq!(std::fs::metadata(&pool).unwrap().permissions().mode() & 0o7777, 0o711);

    // Planned as live (without applying): the pool is defined through the caller, owner root.
    std::fs::remove_dir(&pool).unwrap();
    let mut live = options(&root);
    live.live = true;
    live.pool_state = PoolState::Absent;
    let p = plan(&live).unwrap();
    let define = p.changes.iter().find(|c| matches!(c.action, Action::DefinePool { .. })).expect("pool definition");
    assert_eq!(define.action, Action::DefinePool { name: "phyllome".into(), path: POOL_PATH.into() });
    let dir = p.changes.iter().find(|c| matches!(c.action, Action::Dir { .. })).expect("pool directory");
    assert!(matches!(dir.action, Action::Dir { mode: 0o711, owner: Some((0, 0)), .. }), "{:?}", dir.action);
    live.pool_state = PoolState::Defined(Some(POOL_PATH.into()));
    assert!(!plan(&live).unwrap().changes.iter().any(|c| matches!(c.action, Action::DefinePool { .. })));
    live.pool_state = PoolState::Defined(Some("/elsewhere".into()));
    assert!(plan(&live).unwrap().render().contains("exists in libvirt with target /elsewhere; not changed"));
}

#[test]
fn a_file_changed_after_planning_is_not_overwritten() {
    let scratch = Scratch::new("race");
    let root = scratch.0.join("root");
    copy_tree(&repo().join("fixtures/setup-roots/debian-grub"), &root);
    let p = plan(&options(&root)).unwrap();
    std::fs::write(root.join("etc/default/grub"), "GRUB_CMDLINE_LINUX=\"edited meanwhile\"\n").unwrap();
    let err = apply(&root, false, &p, &mut NothingRuns).unwrap_err().to_string();
    assert!(err.contains("/etc/default/grub changed since the plan was made"), "{err}");
}

/// On a live host the command runs; a file it was expected to change but left
/// as it was gets the known effect, so the next run converges.
#[test]
fn live_commands_run_and_their_known_effects_are_ensured() {
    struct Record(Vec<Vec<String>>, PathBuf);
    impl Executor for Record {
        fn run(&mut self, argv: &[String]) -> Result<(), String> {
            // A grubby that updates the BLS entries only.
            if argv[0] == "grubby" {
                for e in std::fs::read_dir(self.1.join("boot/loader/entries")).unwrap() {
                    let p = e.unwrap().path();
                    let t = std::fs::read_to_string(&p)
                        .unwrap()
                        .replace("rhgb quiet\n", "rhgb quiet intel_iommu=on iommu=pt\n");
                    std::fs::write(&p, t).unwrap();
                }
            }
            self.0.push(argv.to_vec());
            Ok(())
        }
        fn define_pool(&mut self, _: &str, _: &str) -> Result<bool, String> {
            Ok(false)
        }
    }
    let scratch = Scratch::new("live");
    let root = scratch.0.join("root");
    copy_tree(&repo().join("fixtures/setup-roots/fedora-grubby"), &root);
    let mut opts = options(&root);
    opts.live = true;
    opts.pool_state = PoolState::Absent;
    let mut p = plan(&opts).unwrap();
    // Live plans make the pool directory root's: only root can do that.
    use std::os::unix::fs::MetadataExt;
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        p.changes.retain(|c| !matches!(c.action, Action::Dir { .. }));
    }
    let mut exec = Record(Vec::new(), root.clone());
    let outcomes = apply(&root, true, &p, &mut exec).unwrap();
    let ran: Vec<String> = exec.0.iter().map(|a| a.join(" ")).collect();
    assert_eq!(
        ran,
        ["grubby --update-kernel=ALL --args=intel_iommu=on iommu=pt", "systemctl try-restart virtqemud.service"]
    );
    assert!(matches!(outcomes.last(), Some(Outcome::LeftToDo(t)) if t.contains("virsh pool-define-as phyllome dir")));
    let grub = std::fs::read_to_string(root.join("etc/default/grub")).unwrap();
    assert!(grub.contains("GRUB_CMDLINE_LINUX=\"rd.lvm.lv=fedora/root rhgb quiet intel_iommu=on iommu=pt\""), "{grub}");
    opts.pool_state = PoolState::Defined(Some(POOL_PATH.into()));
    let again = plan(&opts).unwrap();
    assert!(again.changes.iter().all(|c| matches!(c.action, Action::Dir { .. })), "{}", again.render());
}
