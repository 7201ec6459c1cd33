//! `phyllome host setup`: configures this host for virtualization, showing
//! every change first (`phyllome_system::setup` plans, `::apply` applies).

use super::Fallible;
use phyllome_engine::errors::Failure;
use phyllome_libvirt::Libvirt;
use phyllome_system::apply::{apply, run_command, Executor, Outcome};
use phyllome_system::setup::{plan, Action, Options, PoolState, Step};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Runs commands, and reaches libvirt for the pool (live host only).
struct Live<'a> {
    uri: &'a str,
}

impl Executor for Live<'_> {
    fn run(&mut self, argv: &[String]) -> Result<(), String> {
        println!("  running {}", phyllome_system::setup::shell_words(argv));
        run_command(argv)
    }

    fn define_pool(&mut self, name: &str, path: &str) -> Result<bool, String> {
        let lv = Libvirt::connect(self.uri).map_err(|e| e.to_string())?;
        lv.ensure_dir_pool(name, path).map_err(|e| e.to_string())?;
        Ok(true)
    }
}

fn pool_state(uri: &str) -> PoolState {
    match Libvirt::connect(uri).and_then(|lv| lv.pool_path(phyllome_engine::POOL)) {
        Ok(None) => PoolState::Absent,
        Ok(Some(path)) => PoolState::Defined(Some(path)),
        Err(e) => PoolState::Unknown(e.to_string()),
    }
}

pub fn run(uri: &str, dry_run: bool, root: &Path) -> Fallible {
    phyllome_engine::host_files::here_only_uri(uri, "host setup (it changes this machine)")?;
    let canon: PathBuf = root.canonicalize().map_err(|e| format!("--root {}: {e}", root.display()))?;
    if !canon.is_dir() {
        return Err(format!("--root {}: not a directory", root.display()).into());
    }
    let live = canon == Path::new("/");
    // /proc/self belongs to the effective user.
    let euid = std::fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(u32::MAX);
    if live && !dry_run && euid != 0 {
        return Err("configuring this host needs root: run it with sudo (or --dry-run to only see the changes)".into());
    }
    let opts = Options {
        root: canon.clone(),
        live,
        pool_name: phyllome_engine::POOL.into(),
        pool_path: phyllome_engine::paths::POOL_PATH.into(),
        pool_state: if live { pool_state(uri) } else { PoolState::Unknown("a --root tree".into()) },
    };
    let plan = plan(&opts).map_err(Failure::failed)?;
    println!(
        "phyllome host setup on {}{}",
        if live { "this host".to_string() } else { canon.display().to_string() },
        if dry_run { " (dry run: nothing is changed)" } else { "" }
    );
    print!("{}", plan.render());
    if dry_run || plan.changes.is_empty() {
        return Ok(());
    }
    println!("\napplying:");
    let outcomes = apply(&canon, live, &plan, &mut Live { uri }).map_err(Failure::failed)?;
    let mut left = 0;
    for (i, (change, outcome)) in plan.changes.iter().zip(&outcomes).enumerate() {
        match outcome {
            Outcome::Done => println!("  {}. done: {}", i + 1, change.summary()),
            Outcome::Recorded => println!("  {}. not run on a --root tree: {}", i + 1, change.summary()),
            Outcome::LeftToDo(what) => {
                left += 1;
                println!("  {}. left to do: {what}", i + 1)
            }
        }
    }
    let reboot = plan.changes.iter().any(|c| matches!(c.step, Step::KernelParams | Step::Nested | Step::VfioModules));
    let written =
        plan.changes.iter().filter(|c| !matches!(c.action, Action::Run { .. } | Action::DefinePool { .. })).count();
    println!(
        "\n{written} files or directories written{}",
        if left > 0 { format!(", {left} step(s) left to do") } else { String::new() }
    );
    if reboot && live {
        println!("reboot for the kernel parameters, vfio modules and nested virtualization to take effect");
    }
    Ok(())
}
